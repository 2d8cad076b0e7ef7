"""Image-level metrics: one anomaly score per image, one binary label per image.

Conventions used throughout this module:

* ``labels``: int array ``[N]`` with values in ``{0, 1}`` (0 = good, 1 = defect).
  Booleans are accepted.
* ``scores``: float array ``[N]``; higher means "more anomalous".
* A sample is *flagged* (predicted defect) when ``score >= threshold``.

All functions return plain Python ``float``/``dict`` values so results can be
dumped to JSON directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

__all__ = [
    "image_auroc",
    "f1_max",
    "rates_at_threshold",
    "per_class_auroc",
    "calibrate_threshold",
]


def _check_labels_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalize inputs.

    Args:
        labels: ``[N]`` values in {0, 1} (int or bool).
        scores: ``[N]`` finite floats.

    Returns:
        ``(labels int64 [N], scores float64 [N])``.

    Raises:
        ValueError: on shape mismatch, non-binary labels or non-finite scores.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if y.size and not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
        raise ValueError(f"labels must be 0 (good) or 1 (defect); found {bad.tolist()}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return y.astype(np.int64, copy=False), s


def _require_both_classes(y: np.ndarray, what: str) -> None:
    """Raise a clear ValueError when ``y`` [N] does not contain both 0 and 1."""
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"{what} is undefined with only one class present "
            f"({n_neg} good / {n_pos} defect samples); need at least one of each"
        )


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of image scores.

    Args:
        labels: ``[N]`` int in {0, 1}.
        scores: ``[N]`` float.

    Returns:
        AUROC as a fraction in [0, 1] (ties between a good and a defect score count 0.5).

    Raises:
        ValueError: if only one class is present (AUROC is undefined then).
    """
    y, s = _check_labels_scores(labels, scores)
    _require_both_classes(y, "image AUROC")
    return float(roc_auc_score(y, s))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over all score thresholds.

    Args:
        labels: ``[N]`` int in {0, 1}.
        scores: ``[N]`` float.

    Returns:
        ``(f1, threshold)``: the maximal F1 and the score threshold achieving it
        (flag ``score >= threshold``). Among thresholds with equal F1 the lowest is
        returned (first argmax over sklearn's ascending thresholds).

    Raises:
        ValueError: if there is no defect sample (F1 is undefined without positives).
    """
    y, s = _check_labels_scores(labels, scores)
    if int(y.sum()) == 0:
        raise ValueError("F1 is undefined without any defect (label 1) sample")
    precision, recall, thresholds = precision_recall_curve(y, s)
    # sklearn appends a final (precision=1, recall=0) point with no threshold: drop it.
    p = precision[: len(thresholds)]
    r = recall[: len(thresholds)]
    denom = p + r
    f1 = np.divide(2.0 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def rates_at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | None]:
    """False-alarm rate and recall when flagging ``score >= threshold``.

    Args:
        labels: ``[N]`` int in {0, 1}.
        scores: ``[N]`` float.
        threshold: decision threshold on the score.

    Returns:
        ``{"false_alarm_rate": fraction of good samples flagged,
        "recall": fraction of defect samples flagged}``. A rate whose class is
        absent is ``None`` (not NaN, which is not valid JSON).
    """
    y, s = _check_labels_scores(labels, scores)
    flagged = s >= float(threshold)
    good = y == 0
    defect = ~good
    far = float(flagged[good].mean()) if good.any() else None
    rec = float(flagged[defect].mean()) if defect.any() else None
    return {"false_alarm_rate": far, "recall": rec}


def per_class_auroc(labels: np.ndarray, scores: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """AUROC of good samples versus the samples of each defect class.

    Args:
        labels: ``[N]`` int in {0, 1}.
        scores: ``[N]`` float.
        classes: ``[N]`` class name of each sample. Only the classes of defect
            (label 1) samples become keys; the class names of good samples are ignored.

    Returns:
        ``{class_name: AUROC(all label-0 samples vs label-1 samples of that class)}``,
        with keys sorted by class name. Empty if there is no defect sample.

    Raises:
        ValueError: if there is no good sample, or ``classes`` has the wrong length.
    """
    y, s = _check_labels_scores(labels, scores)
    cls = np.asarray([str(c) for c in classes], dtype=object)
    if cls.shape != y.shape:
        raise ValueError(f"classes has {cls.shape[0]} entries, expected {y.shape[0]}")
    good = y == 0
    if not good.any():
        raise ValueError("per-class AUROC needs at least one good (label 0) sample")
    s_good = s[good]
    out: dict[str, float] = {}
    for name in sorted(set(cls[y == 1].tolist())):
        s_cls = s[(y == 1) & (cls == name)]
        y_pair = np.concatenate([np.zeros(s_good.size, np.int64), np.ones(s_cls.size, np.int64)])
        out[name] = float(roc_auc_score(y_pair, np.concatenate([s_good, s_cls])))
    return out


def calibrate_threshold(good_scores: np.ndarray, target_false_alarm_rate: float = 0.01) -> float:
    """Lowest threshold whose false-alarm rate on ``good_scores`` is <= the target.

    Takes the ``(1 - target)`` quantile with ``method="higher"`` (an actual observed
    score, never an interpolated one). If flagging ``score >= q`` would exceed the
    target because of ties at ``q`` (or because ``q`` is itself the score of a
    sample that must not be flagged), the threshold is moved to the smallest
    representable float strictly above ``q``, so exactly the scores ``> q`` are
    flagged. The result flags the largest possible number of good scores that
    stays within the target, i.e. no threshold flags a strictly larger subset of
    ``good_scores`` while keeping the rate <= target.

    The step above ``q`` is taken in the dtype of ``good_scores`` when it is a
    float32/float16 array (otherwise float64), so the returned value is exactly
    representable in that dtype and a later cast cannot round it back onto ``q``.

    Args:
        good_scores: ``[M]`` scores of known-good images (M >= 1).
        target_false_alarm_rate: allowed fraction of good images with
            ``score >= threshold``, in [0, 1).

    Returns:
        The threshold as a Python float.

    Raises:
        ValueError: if ``good_scores`` is empty or not finite, or the target is outside [0, 1).
    """
    g = np.asarray(good_scores).ravel()
    if g.size == 0:
        raise ValueError("cannot calibrate a threshold on an empty set of good scores")
    target = float(target_false_alarm_rate)
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target_false_alarm_rate must be in [0, 1), got {target}")
    dtype = g.dtype if g.dtype in (np.float16, np.float32) else np.dtype(np.float64)
    g = g.astype(dtype, copy=False)
    if not np.isfinite(g).all():
        raise ValueError("good_scores contain NaN or infinite values")
    q = np.quantile(g, 1.0 - target, method="higher").astype(dtype)
    if np.mean(g >= q) > target:
        # Ties (or q itself) would be flagged: step just above q so only scores > q flag.
        q = np.nextafter(q, dtype.type(np.inf))
    return float(q)
