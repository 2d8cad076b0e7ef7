"""The model slot of live inspection: a loaded bundle and, for `registry:PRODUCT`, hot reload.

With a bundle folder the slot holds one `BundleInspector`. With `registry:PRODUCT` a
daemon thread polls `inference.registry.Registry.current(PRODUCT)` every `interval`
seconds; when the current version changes, the new bundle is loaded (verified, warmed
up) in that thread, and `swap_if_ready()`, which the loop calls between batches, puts
it in place. Frames keep queueing meanwhile, so none is lost, and none is inspected by a
half-loaded model. A version that fails to load is logged and not retried until the
registry's current version changes again.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Optional

from inference.registry import REGISTRY_PREFIX, Registry, resolve_model
from inference.runtime import BundleInspector

log = logging.getLogger("loupe.live")


class ModelSlot:
    """The inspector in use; swaps in a newer registry version between batches."""

    def __init__(self, spec: str | Path, *, runtime: Optional[str] = None, home: Optional[Path] = None,
                 interval: float = 2.0) -> None:
        self.spec = str(spec)
        self.runtime, self.home, self.interval = runtime, home, interval
        self.product = self.spec[len(REGISTRY_PREFIX):] if self.spec.startswith(REGISTRY_PREFIX) else None
        self.registry_version: Optional[str] = None
        if self.product is not None:
            entry = Registry(home).current(self.product)
            if entry is None:
                raise ValueError(f"registry:{self.product} has no current version; promote one with `loupe registry promote`")
            bundle_dir = entry.path
            self.registry_version = entry.version
        else:
            bundle_dir, _ = resolve_model(self.spec, home)
        self.inspector = BundleInspector.load(bundle_dir, runtime=runtime)
        self.reloads = 0
        self.history: list[str] = [self.inspector.model_version]
        self._pending: Optional[tuple[BundleInspector, str]] = None
        self._watched = self.registry_version
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if self.product is not None:
            self._thread = threading.Thread(target=self._watch, name="loupe-reload", daemon=True)
            self._thread.start()

    @property
    def model_version(self) -> str:
        return self.inspector.model_version

    def _watch(self) -> None:
        assert self.product is not None
        while not self._stop.wait(self.interval):
            try:
                entry = Registry(self.home).current(self.product)
            except Exception as err:  # noqa: BLE001 - a registry hiccup must not stop the station
                log.warning("registry:%s: cannot read the current version (%s); keeping %s", self.product, err, self.model_version)
                continue
            if entry is None or entry.version == self._watched:
                continue
            self._watched = entry.version
            log.warning("registry:%s: current is now %s; loading it in the background", self.product, entry.version)
            try:
                new = BundleInspector.load(entry.path, runtime=self.runtime)
            except Exception as err:  # noqa: BLE001
                log.error("registry:%s: version %s does not load (%s); keeping %s", self.product, entry.version, err, self.model_version)
                continue
            with self._lock:
                self._pending = (new, entry.version)

    def swap_if_ready(self) -> bool:
        """Put a loaded new version in place (call between batches); True when swapped."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return False
        old = self.model_version
        self.inspector, self.registry_version = pending
        self.reloads += 1
        self.history.append(self.inspector.model_version)
        log.warning("model swapped between batches: %s -> %s (registry %s)", old, self.model_version, self.registry_version)
        return True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
