"""Model registry and promotion gate: plain-function tests on real (tiny) exported bundles.

Reliability: kill -9 during a registration or a promotion leaves the previous champion
`current` and the leftovers are cleaned next time; two processes registering at once keep
the registry consistent.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference.bundle import read_bundle
from inference.gate import GateConfig, gate
from inference.registry import (
    CURRENT_FILE, EVENTS_FILE, PAUSE_ENV, Registry, RegistryError, STAGING_PREFIX, VERSIONS_DIR, resolve_model,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def bundles(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> list[Path]:
    """Three real bundles of the tiny data set with different model versions (smoke config, no pretraining epochs)."""
    from inference.export import export_bundle
    from pipeline.config import load_config
    from pipeline.steps import fit_step, pretrain_step

    root = tmp_path_factory.mktemp("bundles")
    out = []
    for i in range(3):
        # a different seeded random encoder each (pretrain_step seeds the initialisation): a different model version
        run = root / f"run{i}"
        pretrain_step(tiny_data / "split.json", run, load_config("smoke", {"pretrain.seed": 100 + i}), epochs=0, progress=False)
        fit_step(run, tiny_data / "split.json", progress=False)
        export_bundle(run, root / f"bundle{i}")
        out.append(root / f"bundle{i}")
    assert len({read_bundle(b).model_version for b in out}) == 3
    return out


def _home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_register_promote_rollback_and_log(bundles: list[Path], tmp_path: Path) -> None:
    reg = Registry(_home(tmp_path))
    assert reg.current("lineA") is None and reg.entries("lineA") == []
    e1 = reg.register("lineA", bundles[0], metrics={"image_auroc": 0.9}, actor="alice")
    assert (e1.version, e1.status, e1.metrics["image_auroc"]) == ("v0001", "challenger", 0.9)
    assert e1.path == _home(tmp_path) / "registry/lineA/versions/v0001"
    assert read_bundle(e1.path).model_version == e1.model_version == read_bundle(bundles[0]).model_version
    assert reg.current("lineA") is None

    reg.promote("lineA", "v0001", actor="alice", reason="first model")
    assert reg.current("lineA").version == "v0001" and reg.current("lineA").status == "champion"
    e2 = reg.register("lineA", bundles[1], metrics={"image_auroc": 0.95}, actor="bob")
    assert e2.version == "v0002" and e2.status == "challenger"
    reg.promote("lineA", e2.model_version[:8], actor="bob")  # by model-version prefix
    statuses = {e.version: e.status for e in reg.entries("lineA")}
    assert statuses == {"v0001": "retired", "v0002": "champion"}

    back = reg.rollback("lineA", actor="carol", reason="line complaint")
    assert back.version == "v0001" and reg.current("lineA").version == "v0001"
    assert {e.version: e.status for e in reg.entries("lineA")} == {"v0001": "champion", "v0002": "retired"}
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback("lineA")
    with pytest.raises(RegistryError, match="already the champion"):
        reg.promote("lineA", "1")

    events = reg.events("lineA")
    assert [e["event"] for e in events] == ["register", "promote", "register", "promote", "rollback"]
    assert [e["actor"] for e in events] == ["alice", "alice", "bob", "bob", "carol"]
    assert all("time" in e and "metrics" in e for e in events)
    assert events[3]["previous"] == "v0001" and events[4]["previous"] == "v0002" and events[4]["reason"] == "line complaint"
    assert events[1]["metrics"] == {"image_auroc": 0.9}

    # Registering the same model again returns the existing version, nothing new is written.
    assert reg.register("lineA", bundles[1]).version == "v0002"
    assert len(reg.entries("lineA")) == 2
    assert reg.products() == ["lineA"]


def test_resolve_model(bundles: list[Path], tmp_path: Path) -> None:
    home = _home(tmp_path)
    reg = Registry(home)
    with pytest.raises(RegistryError, match="no champion"):
        resolve_model("registry:lineB", home)
    e = reg.register("lineB", bundles[2])
    reg.promote("lineB", e.version)
    path, mv = resolve_model("registry:lineB", home)
    assert path == e.path and mv == e.model_version
    path, mv = resolve_model(str(bundles[0]), home)
    assert path == bundles[0] and mv == read_bundle(bundles[0]).model_version
    with pytest.raises(RegistryError, match="not a model bundle"):
        resolve_model(str(tmp_path), home)
    os.environ["LOUPE_HOME"] = str(home)  # home=None reads LOUPE_HOME
    try:
        assert resolve_model("registry:lineB")[0] == e.path
    finally:
        del os.environ["LOUPE_HOME"]


def test_bad_input(bundles: list[Path], tmp_path: Path) -> None:
    reg = Registry(_home(tmp_path))
    for bad in ("", "../x", ".hidden", "a/b", "x" * 65):
        with pytest.raises(RegistryError, match="invalid product id"):
            reg.current(bad)
    with pytest.raises(RegistryError, match="not a model bundle"):
        reg.register("p", tmp_path)
    reg.register("p", bundles[0])
    with pytest.raises(RegistryError, match="has no version 'v0009'"):
        reg.entry("p", "v0009")


def test_damaged_version_is_never_promoted(bundles: list[Path], tmp_path: Path) -> None:
    reg = Registry(_home(tmp_path))
    e1 = reg.register("p", bundles[0])
    reg.promote("p", e1.version)
    e2 = reg.register("p", bundles[1])
    with open(e2.path / "model.onnx", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(RegistryError, match="not promoting"):
        reg.promote("p", e2.version)
    assert reg.current("p").version == e1.version


def test_torn_event_line_is_tolerated(bundles: list[Path], tmp_path: Path) -> None:
    reg = Registry(_home(tmp_path))
    reg.register("p", bundles[0])
    with open(reg.product_dir("p") / EVENTS_FILE, "ab") as f:
        f.write(b'{"event": "promote", "ver')  # a process killed mid-append
    reg.promote("p", "v0001")
    with pytest.warns(UserWarning, match="unreadable line"):
        events = reg.events("p")
    assert [e["event"] for e in events] == ["register", "promote"]


def test_lock_timeout(bundles: list[Path], tmp_path: Path) -> None:
    from filelock import FileLock

    reg = Registry(_home(tmp_path), lock_timeout=0.2)
    reg.register("p", bundles[0])
    with FileLock(str(reg.product_dir("p") / ".lock")):
        with pytest.raises(RegistryError, match="locked by another process"):
            Registry(_home(tmp_path), lock_timeout=0.2).promote("p", "v0001")


# ---------------------------------------------------------------------------- processes: kill -9 and concurrency

_SCRIPT = """
import sys
from inference.registry import Registry
home, op, product, arg = sys.argv[1:5]
reg = Registry(home)
if op == "register":
    print(reg.register(product, arg, actor="proc").version)
else:
    print(reg.promote(product, arg, actor="proc").version)
"""


def _spawn(home: Path, op: str, product: str, arg: str, pause: str | None = None, marker: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop(PAUSE_ENV, None)
    if pause:
        env.update({PAUSE_ENV: pause, PAUSE_ENV + "_MARKER": str(marker)})
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(home), op, product, arg], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "the subprocess never reached the pause point"
        time.sleep(0.05)


@pytest.mark.parametrize("point", ["staged", "renamed"])
def test_kill_during_registration(bundles: list[Path], tmp_path: Path, point: str) -> None:
    home = _home(tmp_path)
    reg = Registry(home)
    champ = reg.register("p", bundles[0])
    reg.promote("p", champ.version)
    current_before = (reg.product_dir("p") / CURRENT_FILE).read_bytes()

    marker = tmp_path / "marker"
    proc = _spawn(home, "register", "p", str(bundles[1]), pause=point, marker=marker)
    _wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    assert (reg.product_dir("p") / CURRENT_FILE).read_bytes() == current_before
    assert reg.current("p").version == champ.version and read_bundle(reg.current("p").path)
    leftovers = list(reg.product_dir("p").glob(STAGING_PREFIX + "*"))
    if point == "staged":
        assert len(leftovers) == 1 and [e.version for e in reg.entries("p")] == ["v0001"]
    else:  # renamed before the log line: the version is complete, a challenger
        assert leftovers == [] and [e.status for e in reg.entries("p")] == ["champion", "challenger"]
    # The next operation cleans up and works.
    e3 = reg.register("p", bundles[2])
    assert list(reg.product_dir("p").glob(STAGING_PREFIX + "*")) == []
    assert all(read_bundle(e.path) for e in reg.entries("p"))
    assert reg.current("p").version == champ.version and e3.status == "challenger"


def test_kill_during_promotion(bundles: list[Path], tmp_path: Path) -> None:
    home = _home(tmp_path)
    reg = Registry(home)
    champ = reg.register("p", bundles[0])
    reg.promote("p", champ.version)
    chall = reg.register("p", bundles[1])
    marker = tmp_path / "marker"
    proc = _spawn(home, "promote", "p", chall.version, pause="before-switch", marker=marker)
    _wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert reg.current("p").version == champ.version
    assert {e.version: e.status for e in reg.entries("p")} == {champ.version: "champion", chall.version: "challenger"}
    assert reg.promote("p", chall.version).status == "champion"  # the lock of the killed process is gone


def test_concurrent_registrations(bundles: list[Path], tmp_path: Path) -> None:
    home = _home(tmp_path)
    reg = Registry(home)
    champ = reg.register("p", bundles[0])
    reg.promote("p", champ.version)
    procs = [_spawn(home, "register", "p", str(b)) for b in bundles[1:]]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    versions = sorted(o[0].strip() for o in outs)
    assert versions == ["v0002", "v0003"]
    entries = reg.entries("p")
    assert [e.version for e in entries] == ["v0001", "v0002", "v0003"]
    assert len({e.model_version for e in entries}) == 3
    assert all(read_bundle(e.path) for e in entries)
    assert [e["event"] for e in reg.events("p")] == ["register", "promote", "register", "register"]
    assert reg.current("p").version == "v0001"
    assert list(reg.product_dir("p").glob(STAGING_PREFIX + "*")) == []
    assert sorted(p.name for p in (reg.product_dir("p") / VERSIONS_DIR).iterdir()) == ["v0001", "v0002", "v0003"]


# ---------------------------------------------------------------------------- the gate


def test_gate_first_model_and_auroc_rule() -> None:
    ok = gate({"image_auroc": 0.90, "false_alarm_rate": 0.0, "n_good": 40}, None, target_false_alarm_rate=0.01)
    assert ok.promote and ok.reasons == [] and ok.checks["auroc"]["note"] == "no champion yet"
    # 0.4 points below: allowed; 0.6 points below: refused with the reason.
    assert gate({"image_auroc": 0.946, "false_alarm_rate": 0.0, "n_good": 40}, {"image_auroc": 0.950}, target_false_alarm_rate=0.01).promote
    assert gate({"image_auroc": 0.945, "false_alarm_rate": 0.0, "n_good": 40}, {"image_auroc": 0.950}, target_false_alarm_rate=0.01).promote
    worse = gate({"image_auroc": 0.944, "false_alarm_rate": 0.0, "n_good": 40}, {"image_auroc": 0.950}, target_false_alarm_rate=0.01)
    assert not worse.promote and "points below the champion" in worse.reasons[0]
    assert gate({"image_auroc": 0.99, "false_alarm_rate": 0.0, "n_good": 40}, {"image_auroc": 0.95}, target_false_alarm_rate=0.01).promote


def test_gate_false_alarm_rule() -> None:
    target = 0.01
    # 1 of 40 (2.5%) is not significantly above 1%; 3 of 40 (7.5%) is.
    assert gate({"false_alarm_rate": 1 / 40, "n_good": 40}, None, target_false_alarm_rate=target).promote
    bad = gate({"false_alarm_rate": 3 / 40, "n_good": 40}, None, target_false_alarm_rate=target)
    assert not bad.promote and "above the target" in bad.reasons[0] and bad.checks["false_alarm"]["false_alarms"] == 3
    strict = gate({"false_alarm_rate": 1 / 40, "n_good": 40}, None, target_false_alarm_rate=target, cfg=GateConfig(alpha=None))
    assert not strict.promote
    # Without labelled data the AUROC check does not apply; the false-alarm check still does.
    na = gate({"image_auroc": None, "false_alarm_rate": 0.0, "n_good": 10}, {"image_auroc": 0.99}, target_false_alarm_rate=target)
    assert na.promote and na.checks["auroc"]["applicable"] is False


def test_gate_failed_evaluation_never_promotes() -> None:
    assert not gate(None, None, target_false_alarm_rate=0.01).promote
    assert not gate({}, {"image_auroc": 0.5}, target_false_alarm_rate=0.01).promote
    assert not gate({"image_auroc": float("nan"), "false_alarm_rate": 0.0, "n_good": 5}, None, target_false_alarm_rate=0.01).promote
    assert not gate({"image_auroc": 0.9}, None, target_false_alarm_rate=0.01).promote  # no false-alarm measurement


# ---------------------------------------------------------------------------- the `loupe registry` commands


def test_registry_cli(bundles: list[Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    home = _home(tmp_path)
    reg = Registry(home)
    reg.register("p", bundles[0], metrics={"image_auroc": 0.91, "false_alarm_rate": 0.0})
    reg.register("p", bundles[1], metrics={"image_auroc": 0.93, "false_alarm_rate": 0.025})

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, [*args, "--home", str(home)])
        assert result.exit_code == 0, result.output
        return result.output

    out = run("registry", "promote", "v0001", "--product", "p", "--actor", "ann", "--reason", "first")
    assert "v0001" in out and "was none" in out
    run("registry", "promote", "2", "--product", "p", "--actor", "bob")
    listing = run("registry", "list")
    assert "p (2 versions" in listing and "* v0002  champion" in listing and "v0001  retired" in listing and "0.9300" in listing
    shown = json.loads(run("registry", "show", "v0001", "--product", "p"))
    assert shown["status"] == "retired" and shown["model_version"] == read_bundle(bundles[0]).model_version
    assert [e["event"] for e in shown["events"]] == ["register", "promote", "promote"]  # its own, and the one that retired it
    out = run("registry", "rollback", "--product", "p", "--actor", "cy", "--reason", "line complaint")
    assert "rolled back from v0002 to v0001" in out and Registry(home).current("p").version == "v0001"
    assert reg.events("p")[-1] == {**reg.events("p")[-1], "event": "rollback", "actor": "cy", "reason": "line complaint"}

    bad = CliRunner().invoke(app, ["registry", "promote", "v0009", "--product", "p", "--home", str(home)])
    assert bad.exit_code == 2 and "Error: product 'p' has no version 'v0009'" in bad.output
    bad = CliRunner().invoke(app, ["registry", "rollback", "--product", "p", "--home", str(home)])
    assert bad.exit_code == 2 and "no previous champion" in bad.output


def test_promotion_is_compare_and_swap(bundles: list[Path], tmp_path: Path) -> None:
    """A promotion decided against one champion is refused when a concurrent run changed the champion meanwhile."""
    from inference.registry import ChampionChanged

    reg = Registry(_home(tmp_path))
    a, b = reg.register("p", bundles[0]), reg.register("p", bundles[1])
    reg.promote("p", a.version, expected_current=None)  # no champion yet, as expected
    with pytest.raises(ChampionChanged, match="changed from None to v0001"):
        reg.promote("p", b.version, expected_current=None)
    assert reg.current("p").version == "v0001"
    assert reg.promote("p", b.version, expected_current="v0001").status == "champion"


def test_all_digit_model_version_prefix(bundles: list[Path], tmp_path: Path) -> None:
    """A hex model version can start with digits only (about 1 in 40 prefixes of 8): such a prefix is
    still matched as a prefix, not read only as a registry number (the old intermittent failure)."""
    reg = Registry(_home(tmp_path))
    first = reg.register("p", bundles[0])
    second = reg.register("p", bundles[1])
    # force the rare case: give the second version an all-digit model version in its stored record
    entry_file = second.path / "entry.json"
    data = json.loads(entry_file.read_text())
    data["model_version"] = "19248409" + data["model_version"][8:]
    entry_file.write_text(json.dumps(data))
    assert reg.entry("p", "19248409").version == second.version
    assert reg.entry("p", "1").version == first.version  # a short number is still the registry version v0001
    assert reg.entry("p", "v0002").version == second.version
