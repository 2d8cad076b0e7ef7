"""Drift watch: quiet on the calibration distribution, alarm on a sustained shift (not on a short burst),
cleared when scores return; reference from the run's start when the bundle has too few calibration scores."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from inference.drift import DriftConfig, DriftWatch, psi

CFG = DriftConfig(window=100, every=25, alpha=1e-3, psi_limit=0.25, patience=3, min_reference=20)


def good(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.clip(rng.normal(0.3, 0.06, n), 0, None)


def test_psi() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 2000)
    assert psi(ref, rng.normal(0, 1, 500)) < 0.05
    assert psi(ref, rng.normal(1.0, 1, 500)) > 0.5


def test_no_alarm_on_the_calibration_distribution() -> None:
    rng = np.random.default_rng(1)
    w = DriftWatch(good(rng, 300), CFG)
    for _ in range(20):
        assert not w.update(good(rng, 50))
    assert w.checks > 10 and w.alarms == 0 and w.state()["reference"] == "calibration"


def test_sustained_shift_alarms_and_clears(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "loupe.drift")
    rng = np.random.default_rng(2)
    w = DriftWatch(good(rng, 300), CFG)
    w.update(good(rng, 200))
    assert not w.alarm
    for _ in range(12):  # lighting changed: every score up by 0.15
        w.update(good(rng, 25) + 0.15)
    assert w.alarm and w.alarms == 1 and w.state()["psi"] > 0.25
    assert any("score drift" in r.getMessage() for r in caplog.records)
    for _ in range(16):  # fixed
        w.update(good(rng, 25))
    assert not w.alarm and any("cleared" in r.getMessage() for r in caplog.records)


def test_short_defect_burst_does_not_alarm() -> None:
    rng = np.random.default_rng(3)
    w = DriftWatch(good(rng, 300), CFG)
    w.update(good(rng, 200))
    w.update(rng.uniform(0.6, 1.0, 15))  # a handful of defective parts in a row
    for _ in range(10):
        w.update(good(rng, 25))
    assert w.alarms == 0


def test_reference_from_run_start_without_calibration_scores() -> None:
    rng = np.random.default_rng(4)
    w = DriftWatch.from_manifest({"calibration": {"scores": [0.4, 0.5]}}, CFG)  # 2 < min_reference
    assert w.state()["reference"] == "run-start" and w.state()["reference_size"] == 0
    w.update(good(rng, 100))
    assert w.state()["reference_size"] == 100
    for _ in range(12):
        w.update(good(rng, 25) + 0.2)
    assert w.alarm
    assert DriftWatch.from_manifest({}, CFG).state()["reference"] == "run-start"  # old bundles: no calibration key
