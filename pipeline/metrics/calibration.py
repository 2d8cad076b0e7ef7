"""Which held-out "good" scores to leave out of threshold calibration.

The threshold is the (1 - target) quantile of the held-out training images' scores. Those
images are unlabeled: when the training list holds a few defective parts, the ones that land in
the held-out share are the highest scores there and set the threshold, so recall at the
threshold collapses (benchmarks/threshold.py). An upper Tukey fence on the log scores sets such
gross outliers aside before the quantile is taken; on clean held-out scores it rarely fires,
and the quantile is then unchanged.
"""
from __future__ import annotations

import numpy as np

from pipeline.metrics.image import calibrate_threshold

MIN_SCORES = 8  # fewer held-out scores give no usable quartiles: nothing is set aside


def calibration_outliers(scores: np.ndarray, fence: float) -> np.ndarray:
    """Held-out image scores [M] -> bool [M], True where a score lies above the upper fence.

    The fence is Q3 + fence * IQR of log(score): image scores are positive distances with a
    long right tail, and in logs the rule does not depend on their scale. `fence` <= 0, or
    fewer than `MIN_SCORES` scores, sets nothing aside. A Tukey fence can never set aside more
    than the quarter of scores above Q3.

    Raises:
        ValueError: if a score is not finite.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not np.isfinite(s).all():
        raise ValueError("held-out scores contain NaN or infinite values")
    out = np.zeros(s.shape, dtype=bool)
    if fence <= 0 or s.size < MIN_SCORES:
        return out
    logs = np.log(np.maximum(s, np.finfo(np.float64).tiny))  # a zero distance (an exact copy) must not give -inf
    q1, q3 = np.quantile(logs, [0.25, 0.75])
    return logs > q3 + fence * (q3 - q1)


def robust_threshold(scores: np.ndarray, target_false_alarm_rate: float, fence: float) -> tuple[float, np.ndarray]:
    """Held-out scores [M] -> (threshold, set-aside mask [M]).

    `calibrate_threshold` on the scores `calibration_outliers` keeps (all of them when
    `fence` <= 0). Scores are cast to float32 first, like the buffer the threshold lands in.
    """
    s = np.asarray(scores).astype(np.float32).ravel()
    drop = calibration_outliers(s, fence)
    return float(calibrate_threshold(s[~drop], target_false_alarm_rate)), drop
