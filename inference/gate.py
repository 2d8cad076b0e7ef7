"""The promotion gate: may a challenger replace the champion?

A challenger is promoted only if both checks pass:

1. Image AUROC on labelled data (when there is labelled data): not more than
   `max_auroc_drop` (0.005, i.e. 0.5 points) below the champion's, both measured on the
   *same* labelled images (the training flow scores the champion bundle on the
   challenger's test set). With no champion the check passes; without labelled data it
   is recorded as not applicable.
2. False-alarm rate on held-out good images meets the target (the bundle's
   `target_false_alarm_rate`). A held-out set of n images can only measure the rate in
   steps of 1/n (with 40 images one false alarm is 2.5%), so "meets" means: the observed
   rate is at most the target, or the number of false alarms is not significantly above
   what the target allows (one-sided binomial test, p >= `alpha`, default 0.05).
   `alpha=None` makes it strict (observed rate <= target).

A failed or missing evaluation never promotes. Plain function, no I/O: the flow records
the decision (`Registry.record_gate`) and promotes only when `promote` is true.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy.stats import binom


@dataclass
class GateConfig:
    max_auroc_drop: float = 0.005  # 0.5 AUROC points
    alpha: float | None = 0.05  # binomial test level of the false-alarm check; None: strict rate <= target


@dataclass
class GateDecision:
    promote: bool
    reasons: list[str]  # why not (empty when promoted) or notes
    checks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def false_alarm_check(rate: float, n_good: int, target: float, alpha: float | None) -> tuple[bool, dict[str, Any]]:
    """Whether an observed false-alarm `rate` over `n_good` held-out good images meets `target`."""
    k = int(round(rate * n_good))
    info: dict[str, Any] = {"false_alarm_rate": rate, "n_good": n_good, "false_alarms": k, "target_false_alarm_rate": target}
    if rate <= target + 1e-12:
        return True, info
    if alpha is None or n_good <= 0:
        return False, info
    p = float(binom.sf(k - 1, n_good, target))  # P(X >= k) when the true rate is the target
    info.update({"binomial_p": p, "alpha": alpha})
    return p >= alpha, info


def gate(challenger: dict[str, Any] | None, champion: dict[str, Any] | None, *, target_false_alarm_rate: float,
         cfg: GateConfig | None = None) -> GateDecision:
    """Decide on promotion.

    challenger: the challenger's evaluation, or None if it failed. Keys: `false_alarm_rate`
        and `n_good` (held-out good images), optional `image_auroc` (labelled data).
    champion: None when there is no champion; else its `image_auroc` on the same labelled data
        (key may be missing or None when it could not be measured).
    """
    cfg = cfg or GateConfig()
    if not challenger:
        return GateDecision(False, ["evaluation failed or missing: never promote without one"], {})
    reasons: list[str] = []
    checks: dict[str, Any] = {"max_auroc_drop": cfg.max_auroc_drop}
    ok = True

    rate, n_good = challenger.get("false_alarm_rate"), challenger.get("n_good")
    if not _finite(rate) or not isinstance(n_good, int) or n_good < 1:
        ok = False
        reasons.append(f"no false-alarm rate on held-out good images (false_alarm_rate={rate!r}, n_good={n_good!r})")
    else:
        far_ok, info = false_alarm_check(float(rate), n_good, target_false_alarm_rate, cfg.alpha)
        checks["false_alarm"] = {**info, "passed": far_ok}
        if not far_ok:
            ok = False
            reasons.append(f"false-alarm rate {100 * rate:.1f}% ({info['false_alarms']} of {n_good} held-out good images) "
                           f"is above the target {100 * target_false_alarm_rate:.1f}%"
                           + (f" (binomial p={info['binomial_p']:.3g} < {cfg.alpha})" if "binomial_p" in info else ""))

    auroc = challenger.get("image_auroc")
    if auroc is None:
        checks["auroc"] = {"applicable": False, "note": "no labelled data: image AUROC not compared"}
    elif not _finite(auroc):
        ok = False
        reasons.append(f"challenger image AUROC is not a number ({auroc!r})")
    elif champion is None:
        checks["auroc"] = {"applicable": True, "challenger": auroc, "champion": None, "passed": True, "note": "no champion yet"}
    else:
        champ = champion.get("image_auroc")
        if not _finite(champ):
            checks["auroc"] = {"applicable": True, "challenger": auroc, "champion": None, "passed": True,
                               "note": "champion AUROC on these data unknown: not compared"}
        else:
            passed = float(auroc) >= float(champ) - cfg.max_auroc_drop - 1e-12
            checks["auroc"] = {"applicable": True, "challenger": auroc, "champion": champ, "drop": float(champ) - float(auroc), "passed": passed}
            if not passed:
                ok = False
                reasons.append(f"image AUROC {auroc:.4f} is {100 * (champ - auroc):.2f} points below the champion's {champ:.4f} "
                               f"(allowed: {100 * cfg.max_auroc_drop:.2f})")
    return GateDecision(ok, reasons, checks)
