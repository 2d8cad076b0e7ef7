"""The training flow under one Prefect test server: train/register/promote, pretraining cache, gate refusals,
and reliability (kill -9 during pretraining, export and registration), plus `loupe server` on PostgreSQL.

Flows run on the tiny synthetic data with the smoke config and 1 pretraining epoch (3 for the kill test).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PRODUCT = "line-1"
#: Pinned so that commits by others during the session cannot change the pretraining cache key.
CODE_VERSION = "test-code-version"

pytestmark = pytest.mark.usefixtures("single_thread", "prefect_harness", "pinned_code_version")


@pytest.fixture(scope="module")
def pinned_code_version() -> Any:
    old = os.environ.get("LOUPE_CODE_VERSION")
    os.environ["LOUPE_CODE_VERSION"] = CODE_VERSION
    yield
    if old is None:
        os.environ.pop("LOUPE_CODE_VERSION", None)
    else:
        os.environ["LOUPE_CODE_VERSION"] = old


def _params(tiny_data: Path, home: Path, **kw: Any) -> Any:
    from flows.training import TrainingParams

    base = dict(data=[str(tiny_data / "split.json")], product=PRODUCT, config="smoke", epochs=1, home=str(home), actor="tester")
    base.update(kw)
    return TrainingParams(**base)


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory, prefect_harness: None, pinned_code_version: None,
            single_thread: None) -> tuple[Path, dict[str, Any]]:
    """A Loupe home where one training run made v0001 the champion of PRODUCT (tests work on copies)."""
    from flows.training import training_flow

    import torch

    home = tmp_path_factory.mktemp("trained") / "home"
    torch.manual_seed(0)  # pretrain_step draws the encoder's initial weights from the global generator
    return home, training_flow(_params(tiny_data, home))


def _copy_home(trained: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(trained[0], home)
    return home


def test_first_run_promotes_with_artifacts(trained: tuple[Path, dict[str, Any]]) -> None:
    from prefect.client.orchestration import get_client

    from inference.bundle import read_bundle
    from inference.registry import Registry

    home, r = trained
    assert r["version"] == "v0001" and r["promoted"] and r["champion"] == "v0001", r["gate"]
    assert r["pretrain"]["cached"] is False and r["pretrain"]["resumed_from_epoch"] == 0 and len(r["pretrain"]["losses"]) == 1
    assert r["data"]["labelled"] and r["metrics"]["n_images"] == 18 and 0 <= r["metrics"]["image_auroc"] <= 1
    entry = Registry(home).current(PRODUCT)
    assert entry.model_version == r["model_version"] == read_bundle(entry.path).model_version
    assert entry.gate["promote"] is True and entry.metrics["evaluation"] == "labelled"
    assert Path(r["pretrain"]["dir"]).parent == home / "work" / PRODUCT / "pretrain"
    assert (Path(r["run_dir"]) / "summary.json").is_file()
    events = Registry(home).events(PRODUCT)
    assert [e["event"] for e in events] == ["register", "gate", "promote"] and events[-1]["actor"] == "tester"
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {f"metrics-{PRODUCT}", f"report-{PRODUCT}", f"pretrain-{PRODUCT}"} <= keys


def test_rerun_skips_pretraining_and_a_worse_model_is_not_promoted(trained: tuple[Path, dict[str, Any]], tiny_data: Path,
                                                                    tmp_path: Path) -> None:
    from flows.training import training_flow
    from inference.registry import Registry

    home = _copy_home(trained, tmp_path)
    first = trained[1]
    # Same inputs: pretraining is a cache hit.
    again = training_flow(_params(tiny_data, home))
    assert again["pretrain"]["cached"] is True and Path(again["pretrain"]["dir"]).name == Path(first["pretrain"]["dir"]).name
    # The same encoder and data give the same scores: no AUROC drop, so the gate promotes the new version.
    assert again["version"] == "v0002" and again["gate"]["checks"]["auroc"]["drop"] == pytest.approx(0.0, abs=1e-9)
    assert again["promoted"] and again["champion"] == "v0002"
    # Another model that must beat the champion by 50 AUROC points (the gate with a negative allowance): stays challenger.
    worse = training_flow(_params(tiny_data, home, overrides=["scorer.seed=1"], max_auroc_drop=-0.5))
    # a scorer-only change re-fits on the cached encoder, with the new scorer settings
    assert worse["pretrain"]["cached"] is True and Path(worse["pretrain"]["dir"]).name == Path(first["pretrain"]["dir"]).name
    assert yaml.safe_load((Path(worse["run_dir"]) / "config.yaml").read_text())["scorer"]["seed"] == 1
    reg = Registry(home)
    assert not worse["promoted"] and any("below the champion" in why for why in worse["gate"]["reasons"])
    assert worse["gate"]["checks"]["auroc"]["champion"] == pytest.approx(first["metrics"]["image_auroc"])  # scored on the same data
    assert reg.current(PRODUCT).version == "v0002"
    chall = reg.entry(PRODUCT, worse["version"])
    assert chall.status == "challenger" and chall.gate["promote"] is False and chall.gate["reasons"]


def test_failed_evaluation_never_promotes(trained: tuple[Path, dict[str, Any]], tiny_data: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.shards
    from flows.training import training_flow
    from inference.registry import Registry

    home = _copy_home(trained, tmp_path)

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ValueError("evaluation failed on purpose")

    monkeypatch.setattr(pipeline.shards, "report_from_shards", broken)
    with pytest.raises(ValueError, match="evaluation failed on purpose"):
        training_flow(_params(tiny_data, home, overrides=["scorer.seed=2"]))
    reg = Registry(home)
    assert [e.version for e in reg.entries(PRODUCT)] == ["v0001"] and reg.current(PRODUCT).version == "v0001"


# ---------------------------------------------------------------------------- kill -9 in a subprocess

_FLOW_SCRIPT = """
import sys
from flows.training import TrainingParams, training_flow
training_flow(TrainingParams.model_validate_json(sys.argv[1]))
"""


def _spawn_flow(params: Any, env_extra: dict[str, str]) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "LOUPE_CODE_VERSION": CODE_VERSION, "PREFECT_LOGGING_LEVEL": "WARNING", **env_extra}
    return subprocess.Popen([sys.executable, "-c", _FLOW_SCRIPT, params.model_dump_json()], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(cond: Any, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the flow subprocess ended (rc {proc.returncode}) before the kill point:\n{proc.stdout.read()[-3000:]}")
        assert time.monotonic() - t0 < timeout, "the kill point was never reached"
        time.sleep(0.05)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def test_kill_during_pretraining_resumes(tiny_data: Path, tmp_path: Path) -> None:
    from flows.training import training_flow
    from pipeline.checkpoint import load_checkpoint

    home = tmp_path / "home"
    params = _params(tiny_data, home, product="resume", epochs=3)
    proc = _spawn_flow(params, {})
    pre_root = home / "work" / "resume" / "pretrain"
    _wait(lambda: any(pre_root.glob("*/pretrain_state.pt")), proc)
    _kill(proc)
    state = next(pre_root.glob("*/pretrain_state.pt"))
    done = int(load_checkpoint(state)["epoch"])
    assert 1 <= done < 3 and not (state.parent / "pretrain.json").exists()

    result = training_flow(params)
    assert result["pretrain"]["dir"] == str(state.parent)
    assert result["pretrain"]["resumed_from_epoch"] == done and result["pretrain"]["cached"] is False
    assert len(result["pretrain"]["losses"]) == 3 and result["version"] == "v0001"


@pytest.mark.parametrize("where", ["export", "registration"])
def test_kill_during_export_or_registration(trained: tuple[Path, dict[str, Any]], tiny_data: Path, tmp_path: Path, where: str) -> None:
    from flows.training import training_flow
    from inference.bundle import read_bundle
    from inference.registry import CURRENT_FILE, STAGING_PREFIX, Registry

    home = _copy_home(trained, tmp_path)
    reg = Registry(home)
    current_before = (reg.product_dir(PRODUCT) / CURRENT_FILE).read_bytes()
    params = _params(tiny_data, home, overrides=["scorer.seed=3"])
    marker = tmp_path / "marker"
    hook = ({"LOUPE_FLOW_PAUSE_AT": "export", "LOUPE_FLOW_PAUSE_AT_MARKER": str(marker)} if where == "export" else
            {"LOUPE_REGISTRY_PAUSE_AT": "staged", "LOUPE_REGISTRY_PAUSE_AT_MARKER": str(marker)})
    proc = _spawn_flow(params, hook)
    _wait(marker.exists, proc)
    _kill(proc)

    runs = home / "work" / PRODUCT / "runs"
    if where == "export":
        assert list(runs.glob("*/.bundle.tmp-*")), "a half-written bundle should be left behind"
    else:
        assert list(reg.product_dir(PRODUCT).glob(STAGING_PREFIX + "*")), "a staging folder should be left behind"
    # The champion is intact and still current.
    assert (reg.product_dir(PRODUCT) / CURRENT_FILE).read_bytes() == current_before
    assert reg.current(PRODUCT).version == "v0001" and read_bundle(reg.current(PRODUCT).path)
    assert [e.version for e in reg.entries(PRODUCT)] == ["v0001"]

    result = training_flow(params.model_copy(update={"promote": False}))
    assert list(runs.glob("*/.bundle.tmp-*")) == [] and list(reg.product_dir(PRODUCT).glob(STAGING_PREFIX + "*")) == []
    assert result["version"] == "v0002" and reg.current(PRODUCT).version == "v0001"
    assert all(read_bundle(e.path) for e in reg.entries(PRODUCT))


def test_two_concurrent_runs_keep_the_registry_consistent(trained: tuple[Path, dict[str, Any]], tiny_data: Path, tmp_path: Path) -> None:
    from inference.bundle import read_bundle
    from inference.registry import STAGING_PREFIX, Registry

    home = _copy_home(trained, tmp_path)
    procs = [_spawn_flow(_params(tiny_data, home, overrides=[f"scorer.seed={10 + i}"], actor=f"run{i}"), {}) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    reg = Registry(home)
    entries = reg.entries(PRODUCT)
    assert [e.version for e in entries] == ["v0001", "v0002", "v0003"] and len({e.model_version for e in entries}) == 3
    assert all(read_bundle(e.path) for e in entries) and list(reg.product_dir(PRODUCT).glob(STAGING_PREFIX + "*")) == []
    assert all(e.gate is not None for e in entries)
    events = reg.events(PRODUCT)
    assert sum(e["event"] == "register" for e in events) == 3 and sum(e["event"] == "gate" for e in events) == 3
    champion = reg.current(PRODUCT)
    promoted = [e["version"] for e in events if e["event"] == "promote"]
    assert champion.version == promoted[-1] and champion.status == "champion"
    assert sum(e.status == "champion" for e in entries) == 1


# ---------------------------------------------------------------------------- the commands


def test_loupe_train_command(trained: tuple[Path, dict[str, Any]], tiny_data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    home = _copy_home(trained, tmp_path)
    result = CliRunner().invoke(app, ["train", str(tiny_data / "split.json"), "--product", PRODUCT, "--config", "smoke", "--epochs", "1",
                                      "--set", "scorer.seed=4", "--home", str(home), "--no-promote", "--actor", "cli", "-q"])
    assert result.exit_code == 0, result.output
    assert "image AUROC" in result.output and f"registered {PRODUCT} v0002" in result.output and "champion: v0001" in result.output
    assert "promotion is off" in result.output
    bad = CliRunner().invoke(app, ["train", str(tiny_data / "split.json"), "--set", "nonsense", "--home", str(home)])
    assert bad.exit_code == 2 and "dotted.key=value" in bad.output


def test_loupe_schedule_serves_a_cron_deployment(tiny_data: Path, tmp_path: Path) -> None:
    """`loupe schedule` registers the training flow with its cron schedule on the server and serves it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("loupe")), "schedule", str(tiny_data / "split.json"), "--cron", "0 2 * * *",
                             "--product", "nightly", "--config", "smoke", "--home", str(tmp_path / "home")],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deployment = None
        t0 = time.monotonic()
        with get_client(sync_client=True) as client:
            while deployment is None and time.monotonic() - t0 < 120:
                assert proc.poll() is None, proc.stdout.read()
                try:
                    deployment = client.read_deployment_by_name("loupe-training/loupe-train-nightly")
                except Exception:  # not registered yet (ObjectNotFound)
                    time.sleep(0.5)
        assert deployment is not None, "the deployment never appeared"
        assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
        params = deployment.parameters["params"]
        assert params["product"] == "nightly" and params["config"] == "smoke" and params["data"] == [str((tiny_data / "split.json").resolve())]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()


# ---------------------------------------------------------------------------- loupe server on PostgreSQL


def test_server_on_postgresql(tmp_path: Path) -> None:
    """`loupe server` with PREFECT_API_DATABASE_CONNECTION_URL on the local PostgreSQL answers /api/health."""
    import socket
    import urllib.request

    psycopg = pytest.importorskip("psycopg")
    pytest.importorskip("asyncpg")
    try:
        admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {err}")
    db = f"loupe_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{db}"')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}",
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("loupe")), "server", "--port", str(port)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        t0, ok = time.monotonic(), False
        while time.monotonic() - t0 < 120 and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as resp:
                    ok = resp.status == 200 and json.loads(resp.read()) is True
                    break
            except OSError:
                time.sleep(0.5)
        assert ok, f"the server never became healthy (rc {proc.poll()})"
        tables = admin.execute(f"SELECT count(*) FROM pg_catalog.pg_database d WHERE d.datname = '{db}'").fetchone()[0]
        assert tables == 1
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{db}") as conn:  # Prefect migrated its schema into it
            n = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'flow_run'").fetchone()[0]
        assert n == 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
