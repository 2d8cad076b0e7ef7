"""Drift watch: is the running score distribution still the one the model was calibrated on?

Reference: the normalized scores of the held-out good images the threshold was
calibrated on (bundle.json `calibration.scores`, written by `loupe export ... --data`).
When a bundle has none, or fewer than `min_reference` of them, the first `window` scores
of the run become the reference instead (logged): that catches a change during the
run, not a station that was already off when it started.

Every `every` new scores, the last `window` scores are compared with the reference by
a two-sample Kolmogorov-Smirnov test (scipy) and the population stability index (PSI,
10 bins at the reference's deciles). A check "shifts" when the KS p-value is below
`alpha` AND the PSI is above `psi_limit` (0.25 is the usual "significant shift").
`patience` shifted checks in a row raise the alarm (a sustained shift, not a burst of
defects): a warning in the log and the `loupe_drift_alarm` metric = 1; as many clean
checks in a row clear it again. Defective parts also raise scores: a real defect burst
is short (it ends within the window) and a lighting change or a moved camera is not.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

log = logging.getLogger("loupe.drift")


@dataclass(frozen=True)
class DriftConfig:
    window: int = 200  # scores compared with the reference
    every: int = 50  # new scores between checks
    alpha: float = 1e-3  # KS p-value below which a check shifts ...
    psi_limit: float = 0.25  # ... together with a PSI above this
    patience: int = 3  # shifted checks in a row before the alarm
    min_reference: int = 20  # fewer calibration scores than this: use the run's first window


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of `current` against `reference` over the reference's quantile bins."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    cur = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    ref, cur = np.clip(ref, eps, None), np.clip(cur, eps, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


class DriftWatch:
    """Feeds on scores; tells (and logs) when their distribution has shifted for a while."""

    def __init__(self, reference: Optional[Sequence[float]] = None, cfg: DriftConfig = DriftConfig()) -> None:
        self.cfg = cfg
        ref = np.asarray(reference if reference is not None else [], np.float64)
        if ref.size >= cfg.min_reference:
            self.reference: Optional[np.ndarray] = ref
            self.reference_source = "calibration"
        else:
            self.reference = None
            self.reference_source = "run-start"
            log.info("drift watch: %s calibration scores (< %d); the run's first %d scores are the reference",
                     ref.size, cfg.min_reference, cfg.window)
        self.recent: deque[float] = deque(maxlen=cfg.window)
        self._since = 0
        self._streak = 0  # shifted (positive) or clean (negative) checks in a row
        self.alarm = False
        self.alarms = 0
        self.checks = 0
        self.last: dict[str, Any] = {"ks": None, "p_value": None, "psi": None}

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], cfg: DriftConfig = DriftConfig()) -> "DriftWatch":
        cal = manifest.get("calibration") or {}
        return cls(cal.get("scores"), cfg)

    def update(self, scores: Sequence[float]) -> bool:
        """Add scores; returns whether the alarm is on."""
        for s in scores:
            self.recent.append(float(s))
            if self.reference is None:
                if len(self.recent) == self.cfg.window:
                    self.reference = np.asarray(self.recent, np.float64)
                    self.recent.clear()
                continue
            self._since += 1
            if self._since >= self.cfg.every and len(self.recent) >= min(self.cfg.window, 2 * self.cfg.every):
                self._since = 0
                self._check()
        return self.alarm

    def _check(self) -> None:
        from scipy.stats import ks_2samp

        assert self.reference is not None
        cur = np.asarray(self.recent, np.float64)
        res = ks_2samp(self.reference, cur)
        p = psi(self.reference, cur)
        self.checks += 1
        self.last = {"ks": float(res.statistic), "p_value": float(res.pvalue), "psi": p,
                     "median": float(np.median(cur)), "reference_median": float(np.median(self.reference))}
        shifted = res.pvalue < self.cfg.alpha and p > self.cfg.psi_limit
        self._streak = (max(self._streak, 0) + 1) if shifted else (min(self._streak, 0) - 1)
        if not self.alarm and self._streak >= self.cfg.patience:
            self.alarm = True
            self.alarms += 1
            log.warning("score drift: the last %d scores differ from the %s reference for %d checks in a row "
                        "(KS %.3f, p %.2g, PSI %.2f, median %.3f vs %.3f): check the camera, lighting and product",
                        len(cur), self.reference_source, self._streak, res.statistic, res.pvalue, p,
                        self.last["median"], self.last["reference_median"])
        elif self.alarm and -self._streak >= self.cfg.patience:
            self.alarm = False
            log.warning("score drift cleared (KS %.3f, PSI %.2f)", res.statistic, p)

    def state(self) -> dict[str, Any]:
        return {"alarm": self.alarm, "alarms": self.alarms, "checks": self.checks, "reference": self.reference_source,
                "reference_size": 0 if self.reference is None else int(self.reference.size), **self.last}
