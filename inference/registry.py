"""Model registry: versioned bundles per product, an atomically switched `current` champion, an audit log.

Layout (root `$LOUPE_HOME/registry/`, LOUPE_HOME defaults to `~/.loupe`)::

    registry/<product>/
        versions/<version>/       a complete bundle folder (bundle.json, model.onnx, ...) plus
                                  entry.json (product, version, model_version, metrics, source, gate)
        current                   small JSON file: {"version", "model_version", "switched_at",
                                  "stack" (champions in promotion order, for rollback), "ever" (every
                                  version that has been champion)}; replaced atomically (os.replace)
        events.jsonl              append-only log, one JSON object a line: register, gate, promote,
                                  rollback; each with time (UTC ISO-8601), actor, version, metrics, reason
        .lock                     filelock: every change for one product happens under it
        .staging-*                a registration in progress (or the leftover of a killed one)

Versions are named `v0001`, `v0002`, ... per product; `RegistryEntry.model_version` is the
bundle's own model version (sha256 prefix of its inspector), the same string
`inference.runtime.BundleInspector.model_version` reports and result records store.

Statuses are derived from `current`, so one atomic file switch is the only commit point
of a promotion or rollback: `champion` is the version `current` names; `retired` is a
version that was champion before; every other version is a `challenger` (with the gate's
reason in `entry.json` when it was refused).

Crash safety: a registration copies the bundle into `.staging-<uuid>/`, verifies every
sha256 and writes entry.json there, then renames the folder to `versions/<version>/`
(the commit point). A process killed at any point leaves either no version or a
complete one, and the previous champion stays `current`; staging leftovers are
removed by the next locked operation on that product (they can only be leftovers:
staging happens under the product lock, and a killed process's lock is released).

Contract for other parts (live inspection polls `Registry.current(product)` for hot reload):

    Registry(home: Path | None = None)
    Registry.current(product) -> RegistryEntry | None       (version, path, status, metrics, model_version, ...)
    resolve_model(spec, home=None) -> (bundle_dir, model_version)   spec: a bundle folder or "registry:PRODUCT"
"""
from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from inference.bundle import BundleError, is_bundle, read_bundle
from pipeline.atomic import write_json_atomic

REGISTRY_DIR = "registry"
VERSIONS_DIR = "versions"
CURRENT_FILE = "current"
EVENTS_FILE = "events.jsonl"
ENTRY_FILE = "entry.json"
LOCK_FILE = ".lock"
STAGING_PREFIX = ".staging-"
STATUSES = ("champion", "challenger", "retired")
REGISTRY_PREFIX = "registry:"
#: Seconds a change waits for another process holding the product's lock.
DEFAULT_LOCK_TIMEOUT = 600.0
#: Test hook: the name of a point in `register` / `promote` where the process sleeps (so a test can kill it there).
PAUSE_ENV = "LOUPE_REGISTRY_PAUSE_AT"
PAUSE_POINTS = ("staged", "renamed", "before-switch")

_PRODUCT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^v(\d{4,})$")


class RegistryError(ValueError):
    """A registry operation that cannot be done: unknown product or version, nothing to roll back to, bad bundle."""


class ChampionChanged(RegistryError):
    """A promotion decided against one champion found another one in place (a concurrent run promoted first)."""


def loupe_home() -> Path:
    """$LOUPE_HOME, default ~/.loupe."""
    return Path(os.environ.get("LOUPE_HOME") or "~/.loupe").expanduser()


def default_actor() -> str:
    """The OS user name (getpass), or "unknown" where there is none (containers without a passwd entry)."""
    try:
        return getpass.getuser()
    except Exception:  # getpass raises KeyError/OSError when no user name can be found
        return "unknown"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_product(product: str) -> str:
    """Product ids are folder names: letters, digits, '.', '_', '-' (max 64), not starting with a dot."""
    if not isinstance(product, str) or not _PRODUCT_RE.match(product):
        raise RegistryError(f"invalid product id {product!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return product


@dataclass(frozen=True)
class RegistryEntry:
    """One registered bundle version of a product."""

    product: str
    version: str  # registry version, "v0001"
    path: Path  # the bundle folder
    status: str  # champion | challenger | retired
    metrics: dict[str, Any]  # metrics recorded at registration (evaluation of the training flow)
    model_version: str  # the bundle's model version (sha256 prefix of its inspector)
    registered_at: str
    actor: str
    source: dict[str, Any] = field(default_factory=dict)  # run folder, data fingerprint, config, commit...
    gate: dict[str, Any] | None = None  # the last gate decision about this version (promote, reasons, checks)

    def to_dict(self) -> dict[str, Any]:
        return {"product": self.product, "version": self.version, "path": str(self.path), "status": self.status,
                "metrics": self.metrics, "model_version": self.model_version, "registered_at": self.registered_at,
                "actor": self.actor, "source": self.source, "gate": self.gate}


def pause_at(point: str, env: str = PAUSE_ENV) -> None:
    """Sleep at `point` when the variable `env` names it (reliability tests kill the process there).

    `{env}_MARKER` names a file that gets the point written when it is reached; `{env}_SECONDS`
    is how long to sleep (default an hour: the test kills the process first).
    """
    if os.environ.get(env) == point:
        marker = os.environ.get(env + "_MARKER")
        if marker:
            Path(marker).write_text(point)
        time.sleep(float(os.environ.get(env + "_SECONDS", "3600")))


def _pause(point: str) -> None:
    pause_at(point, PAUSE_ENV)


class Registry:
    """Versioned model bundles per product under `home/registry/`; see the module docstring for the layout."""

    def __init__(self, home: str | Path | None = None, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.home = Path(home).expanduser() if home is not None else loupe_home()
        self.root = self.home / REGISTRY_DIR
        self.lock_timeout = lock_timeout

    # ------------------------------------------------------------------ reading (lock-free: files are replaced atomically)

    def products(self) -> list[str]:
        """Products with at least one registered version."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / VERSIONS_DIR).is_dir() and _PRODUCT_RE.match(p.name))

    def product_dir(self, product: str) -> Path:
        return self.root / check_product(product)

    def _state(self, product: str) -> dict[str, Any]:
        path = self.product_dir(product) / CURRENT_FILE
        if not path.is_file():
            return {"version": None, "stack": [], "ever": []}
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RegistryError(f"{path} is not readable JSON ({err}); the registry of {product!r} is damaged") from err
        if not isinstance(state, dict) or "version" not in state:
            raise RegistryError(f"{path} is not a registry pointer (no 'version'); the registry of {product!r} is damaged")
        state.setdefault("stack", [state["version"]] if state["version"] else [])
        state.setdefault("ever", list(state["stack"]))
        return state

    def _entry_from_dir(self, product: str, vdir: Path, state: dict[str, Any]) -> RegistryEntry:
        try:
            data = json.loads((vdir / ENTRY_FILE).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RegistryError(f"{vdir / ENTRY_FILE} is missing or not readable JSON ({err}); the version folder is damaged") from err
        version = vdir.name
        status = "champion" if state.get("version") == version else "retired" if version in state.get("ever", []) else "challenger"
        return RegistryEntry(product=product, version=version, path=vdir, status=status, metrics=data.get("metrics") or {},
                             model_version=str(data.get("model_version", "")), registered_at=str(data.get("registered_at", "")),
                             actor=str(data.get("actor", "")), source=data.get("source") or {}, gate=data.get("gate"))

    def _version_dirs(self, product: str) -> list[Path]:
        vroot = self.product_dir(product) / VERSIONS_DIR
        if not vroot.is_dir():
            return []
        return sorted((p for p in vroot.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)), key=lambda p: int(p.name[1:]))

    def entries(self, product: str) -> list[RegistryEntry]:
        """Every version of `product`, oldest first (empty for an unknown product)."""
        state = self._state(product)
        return [self._entry_from_dir(product, d, state) for d in self._version_dirs(product)]

    def entry(self, product: str, version: str) -> RegistryEntry:
        """A version by registry version ("v0003", "3") or by a unique model_version prefix."""
        entries = self.entries(product)
        if not entries:
            raise RegistryError(f"no models registered for product {product!r} under {self.root}; train one with `loupe train DATA --product {product}`")
        raw = version.strip()
        wanted = f"v{int(raw):04d}" if raw.isdigit() else raw
        for e in entries:
            if e.version == wanted:
                return e
        # a hex model_version prefix may be all digits ("19248409"): match it as written
        matches = [e for e in entries if raw and e.model_version.startswith(raw)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(e.version for e in entries)
        if len(matches) > 1:
            raise RegistryError(f"model version prefix {version!r} matches {len(matches)} versions of {product!r}; use the registry version ({known})")
        raise RegistryError(f"product {product!r} has no version {version!r}; registered: {known}")

    def current(self, product: str) -> RegistryEntry | None:
        """The champion of `product` (what `current` names), or None when nothing was promoted yet."""
        state = self._state(product)
        version = state.get("version")
        if not version:
            return None
        vdir = self.product_dir(product) / VERSIONS_DIR / version
        return self._entry_from_dir(product, vdir, state)

    def events(self, product: str) -> list[dict[str, Any]]:
        """The audit log of `product`, oldest first. A torn last line (a process killed mid-append) is skipped with a warning."""
        path = self.product_dir(product) / EVENTS_FILE
        if not path.is_file():
            return []
        out, bad = [], 0
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
        if bad:
            warnings.warn(f"{path}: skipped {bad} unreadable line(s) (a process was killed while appending)")
        return out

    # ------------------------------------------------------------------ changing (under the product's file lock)

    @contextlib.contextmanager
    def locked(self, product: str) -> Iterator[Path]:
        """Hold `product`'s lock (waiting up to lock_timeout s) and clean leftovers of killed operations first."""
        pdir = self.product_dir(product)
        pdir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(pdir / LOCK_FILE), timeout=self.lock_timeout)
        try:
            lock.acquire()
        except Timeout:
            raise RegistryError(f"the registry of {product!r} is locked by another process ({pdir / LOCK_FILE}) for more than "
                                f"{self.lock_timeout:.0f} s; try again when it has finished") from None
        try:
            self._cleanup_locked(product)
            yield pdir
        finally:
            lock.release()

    def _cleanup_locked(self, product: str) -> list[Path]:
        """Remove staging folders and temp files of killed operations (we hold the lock, so nobody else is staging)."""
        pdir = self.product_dir(product)
        removed = []
        for p in [*pdir.glob(STAGING_PREFIX + "*"), *pdir.glob(f".{CURRENT_FILE}.*.tmp"), *(pdir / VERSIONS_DIR).glob(".*.tmp")]:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        for vdir in self._version_dirs(product):  # entry.json files rewritten by record_gate leave temp files on a kill
            for tmp in vdir.glob(f".{ENTRY_FILE}.*.tmp"):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        return removed

    def cleanup(self, product: str) -> list[Path]:
        """Remove leftovers of killed registrations of `product`; returns what was removed."""
        with self.locked(product):
            return self._cleanup_locked(product)

    def _append_event(self, product: str, event: dict[str, Any]) -> dict[str, Any]:
        path = self.product_dir(product) / EVENTS_FILE
        record = {"time": utc_now(), "product": product, **event}
        line = json.dumps(record, allow_nan=False, default=str)
        with open(path, "ab") as f:
            if f.tell() > 0:  # a torn last line must not swallow this event
                with open(path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        f.write(b"\n")
            f.write(line.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        return record

    def _write_state(self, product: str, state: dict[str, Any]) -> None:
        _pause("before-switch")
        write_json_atomic(self.product_dir(product) / CURRENT_FILE, state)  # the commit point of promote/rollback

    def register(self, product: str, bundle_dir: str | Path, *, metrics: dict[str, Any] | None = None,
                 source: dict[str, Any] | None = None, actor: str | None = None) -> RegistryEntry:
        """Copy a bundle into the registry as a new challenger version; returns its entry.

        The bundle is verified (every sha256) before and after copying. Registering a bundle
        whose model_version is already registered returns that existing entry instead.
        """
        bundle_dir = Path(bundle_dir)
        if not is_bundle(bundle_dir):
            raise RegistryError(f"{bundle_dir} is not a model bundle (no bundle.json); export one with `loupe export RUN_DIR --out {bundle_dir}`")
        bundle = read_bundle(bundle_dir)  # BundleError (a ValueError) names a damaged file
        actor = actor or default_actor()
        with self.locked(product) as pdir:
            for e in self.entries(product):
                if e.model_version == bundle.model_version:
                    return e
            staging = pdir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
            try:
                shutil.copytree(bundle_dir, staging, ignore=shutil.ignore_patterns(ENTRY_FILE, ".*"))
                read_bundle(staging)  # the copy is complete and intact
                existing = self._version_dirs(product)
                version = f"v{(int(existing[-1].name[1:]) + 1) if existing else 1:04d}"
                entry = {"product": product, "version": version, "model_version": bundle.model_version,
                         "registered_at": utc_now(), "actor": actor, "metrics": metrics if metrics is not None else (bundle.manifest.get("metrics") or {}),
                         "source": {"bundle": str(bundle_dir.resolve()), **(source or {})}, "gate": None}
                write_json_atomic(staging / ENTRY_FILE, entry)
                _pause("staged")
                (pdir / VERSIONS_DIR).mkdir(exist_ok=True)
                os.replace(staging, pdir / VERSIONS_DIR / version)  # the commit point of a registration
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _pause("renamed")
            self._append_event(product, {"event": "register", "version": version, "model_version": bundle.model_version,
                                         "actor": actor, "metrics": entry["metrics"], "source": entry["source"]})
            return self._entry_from_dir(product, pdir / VERSIONS_DIR / version, self._state(product))

    def record_gate(self, product: str, version: str, decision: dict[str, Any], *, actor: str | None = None) -> RegistryEntry:
        """Store a gate decision in the version's entry.json and the log (does not promote)."""
        actor = actor or default_actor()
        with self.locked(product):
            e = self.entry(product, version)
            data = json.loads((e.path / ENTRY_FILE).read_text())
            data["gate"] = {**decision, "time": utc_now(), "actor": actor}
            write_json_atomic(e.path / ENTRY_FILE, data)
            self._append_event(product, {"event": "gate", "version": e.version, "model_version": e.model_version, "actor": actor,
                                         "promote": bool(decision.get("promote")), "reasons": decision.get("reasons", []),
                                         "metrics": decision.get("checks", {})})
            return self.entry(product, e.version)

    def promote(self, product: str, version: str, *, actor: str | None = None, reason: str | None = None,
                metrics: dict[str, Any] | None = None, expected_current: str | None | bool = False) -> RegistryEntry:
        """Make `version` the champion: verify its bundle, then switch `current` atomically; logged with actor and metrics.

        expected_current: the champion the decision was made against (a version, or None for "no
        champion"); if another process changed the champion meanwhile, a ChampionChanged error is
        raised and nothing is switched (compare-and-swap). False (default): no check.
        """
        actor = actor or default_actor()
        with self.locked(product):
            e = self.entry(product, version)
            state = self._state(product)
            if expected_current is not False and state.get("version") != expected_current:
                raise ChampionChanged(f"the champion of {product!r} changed from {expected_current} to {state.get('version')} "
                                      f"while {e.version} was evaluated; not promoting it (train again to compare with the new champion)")
            if state.get("version") == e.version:
                raise RegistryError(f"{product} {e.version} is already the champion")
            try:
                read_bundle(e.path)
            except BundleError as err:
                raise RegistryError(f"not promoting {product} {e.version}: {err}") from err
            previous = state.get("version")
            stack = [v for v in state.get("stack", [])] + [e.version]
            ever = list(dict.fromkeys([*state.get("ever", []), e.version]))
            self._write_state(product, {"version": e.version, "model_version": e.model_version, "switched_at": utc_now(),
                                        "actor": actor, "stack": stack, "ever": ever})
            self._append_event(product, {"event": "promote", "version": e.version, "model_version": e.model_version,
                                         "previous": previous, "actor": actor, "reason": reason,
                                         "metrics": metrics if metrics is not None else e.metrics})
            return self.entry(product, e.version)

    def rollback(self, product: str, *, actor: str | None = None, reason: str | None = None) -> RegistryEntry:
        """Switch `current` back to the previous champion; the rolled-back version becomes retired."""
        actor = actor or default_actor()
        with self.locked(product):
            state = self._state(product)
            stack = list(state.get("stack", []))
            if not state.get("version") or len(stack) < 2:
                raise RegistryError(f"product {product!r} has no previous champion to roll back to "
                                    f"(current: {state.get('version')}); promote a version instead")
            rolled_back = stack.pop()
            target = self.entry(product, stack[-1])
            try:
                read_bundle(target.path)
            except BundleError as err:
                raise RegistryError(f"cannot roll back {product} to {target.version}: {err}") from err
            self._write_state(product, {"version": target.version, "model_version": target.model_version, "switched_at": utc_now(),
                                        "actor": actor, "stack": stack, "ever": state.get("ever", stack)})
            self._append_event(product, {"event": "rollback", "version": target.version, "model_version": target.model_version,
                                         "previous": rolled_back, "actor": actor, "reason": reason, "metrics": target.metrics})
            return self.entry(product, target.version)


def resolve_model(spec: str | Path, home: str | Path | None = None) -> tuple[Path, str]:
    """A bundle folder or "registry:PRODUCT" -> (bundle_dir, model_version).

    model_version is the bundle's own model version (bundle.json), as
    `BundleInspector.model_version` reports it for fp32.
    """
    text = str(spec)
    if text.startswith(REGISTRY_PREFIX):
        product = text[len(REGISTRY_PREFIX):].strip()
        entry = Registry(home).current(product)
        if entry is None:
            raise RegistryError(f"product {product!r} has no champion in the registry ({Registry(home).root}); "
                                f"train and promote one with `loupe train DATA --product {product}`")
        return entry.path, entry.model_version
    path = Path(text).expanduser()
    if not is_bundle(path):
        raise RegistryError(f"{path} is not a model bundle folder (no bundle.json) and not 'registry:PRODUCT'")
    from inference.bundle import read_manifest

    return path, str(read_manifest(path)["model_version"])
