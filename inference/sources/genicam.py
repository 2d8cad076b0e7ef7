"""GenICam cameras through `harvesters` (optional extra: `pip install 'loupe[genicam]'`).

`genicam:PRODUCER.cti[#DEVICE]` opens the device (index, or id/serial/model match;
default the first one) of a GenTL producer file and yields its frames:
Mono8 as gray, RGB8/BGR8/RGBa8/BGRa8 as RGB (other pixel formats become error frames).
A fetch timeout or acquisition error is a stream error: the acquirer is destroyed and
recreated with exponential backoff (logged), like the OpenCV stream source.

Tested with the simulated producer `viky.cti` that the `genicam` wheel (a dependency of
harvesters) ships; `simulated_producer()` finds it.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from inference.sources.base import Frame, Source, SourceError

log = logging.getLogger("loupe.sources.genicam")

_CHANNELS = {"Mono8": (1, None), "RGB8": (3, None), "BGR8": (3, "bgr"), "RGBa8": (4, None), "BGRa8": (4, "bgr")}


def simulated_producer() -> Path | None:
    """The simulated GenTL producer shipped with the `genicam` package, if installed."""
    try:
        import genicam
    except ImportError:
        return None
    p = Path(genicam.__file__).parent / "viky.cti"
    return p if p.is_file() else None


class GenICamSource(Source):
    """Frames of a GenICam device via harvesters."""

    live = True

    def __init__(self, producer: str | Path, device: str | int = 0, *, stop: threading.Event | None = None,
                 timeout: float = 3.0, backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 max_reopens: int | None = None) -> None:
        super().__init__(stop)
        try:
            from harvesters.core import Harvester  # noqa: F401
        except ImportError as err:
            raise SourceError("genicam sources need the optional extra: pip install 'loupe[genicam]' (harvesters)") from err
        self.producer = Path(producer)
        if not self.producer.is_file():
            raise SourceError(f"GenTL producer {self.producer} does not exist; pass genicam:PATH/TO/PRODUCER.cti[#DEVICE]")
        self.device = device
        self.spec = f"genicam:{self.producer}#{device}"
        self.timeout, self.backoff_initial, self.backoff_max, self.max_reopens = timeout, backoff_initial, backoff_max, max_reopens
        self._h: Any = None
        self._ia: Any = None

    def _open(self) -> None:
        from harvesters.core import Harvester

        if self._h is None:
            self._h = Harvester()
            self._h.add_file(str(self.producer))
            self._h.update()
        infos = self._h.device_info_list
        if not infos:
            raise RuntimeError(f"producer {self.producer} lists no devices")
        if isinstance(self.device, int) or str(self.device).isdigit():
            idx = int(self.device)
            if idx >= len(infos):
                raise SourceError(f"{self.spec}: device {idx} does not exist ({len(infos)} device(s))")
            self._ia = self._h.create(idx)
        else:
            for key in ("id_", "serial_number", "model", "user_defined_name"):
                if any(getattr(i, key, None) == self.device for i in infos):
                    self._ia = self._h.create({key: self.device})
                    break
            else:
                raise SourceError(f"{self.spec}: no device matches {self.device!r}; devices: {[i.id_ for i in infos]}")
        self._ia.start()

    def _close_device(self) -> None:
        if self._ia is not None:
            try:
                self._ia.stop()
                self._ia.destroy()
            except Exception:  # noqa: BLE001 - the device may be gone already
                pass
            self._ia = None

    @staticmethod
    def _convert(component: Any) -> tuple[np.ndarray | None, str | None]:
        fmt = str(component.data_format)
        if fmt not in _CHANNELS:
            return None, f"unsupported GenICam pixel format {fmt}; set the camera to Mono8 or RGB8"
        c, order = _CHANNELS[fmt]
        h, w = int(component.height), int(component.width)
        data = np.asarray(component.data, dtype=np.uint8)
        if data.size != h * w * c:
            return None, f"GenICam buffer has {data.size} bytes, expected {h}x{w}x{c}"
        a = data.reshape(h, w) if c == 1 else data.reshape(h, w, c)[:, :, :3]
        if order == "bgr":
            a = a[:, :, ::-1]
        return np.ascontiguousarray(a), None  # copy: the buffer is re-queued on exit of the fetch block

    def frames(self) -> Iterator[Frame]:
        index, delay, attempt = 0, self.backoff_initial, 0
        try:
            while not self.stop.is_set():
                if self._ia is None:
                    try:
                        self._open()
                        if attempt:
                            log.warning("%s: reopened after %d attempt(s)", self.spec, attempt)
                            self.reopens += 1
                        attempt, delay = 0, self.backoff_initial
                    except SourceError:
                        raise
                    except Exception as err:  # noqa: BLE001 - any acquisition error: back off and retry
                        attempt += 1
                        if self.max_reopens is not None and attempt > self.max_reopens:
                            log.error("%s: giving up after %d attempts (%s)", self.spec, self.max_reopens, err)
                            return
                        log.warning("%s: %s; reopening in %.2f s (attempt %d)", self.spec, err, delay, attempt)
                        self._close_device()
                        if self.wait(delay):
                            return
                        delay = min(delay * 2, self.backoff_max)
                        continue
                try:
                    with self._ia.fetch(timeout=self.timeout) as buf:
                        image, err = self._convert(buf.payload.components[0])
                except Exception as e:  # noqa: BLE001 - timeout or transport error: reopen
                    log.warning("%s: fetch failed (%s); reopening", self.spec, e)
                    self._close_device()
                    attempt = max(attempt, 1)
                    continue
                yield Frame(index=index, image=image, source=self.spec, error=err)
                index += 1
        finally:
            self._close_device()
            if self._h is not None:
                self._h.reset()
                self._h = None
