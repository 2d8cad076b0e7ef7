"""Dashboard numbers: flagged rate per station over time, false-alarm share per model version.

The flagged rate comes from the run counters (`runs.flagged / runs.frames`, kept up to
date by live inspection), summed per station and per time bucket of the run start (hours
when the runs span less than two days, else days). The false-alarm share of a model
version is, among its records with a standing verdict, the fraction judged false alarms.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from inference.review.models import Verdict
from inference.review.queue import standing_conditions
from inference.store.models import Record, Run


@dataclass
class StationStats:
    station: str
    runs: int
    frames: int
    flagged: int

    @property
    def rate(self) -> float | None:
        return self.flagged / self.frames if self.frames else None


@dataclass
class ModelStats:
    model_version: str
    records: int
    defects: int
    false_alarms: int

    @property
    def reviewed(self) -> int:
        return self.defects + self.false_alarms

    @property
    def false_alarm_share(self) -> float | None:
        return self.false_alarms / self.reviewed if self.reviewed else None


def _bucket(t: datetime, hourly: bool) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0) if hourly else t.replace(hour=0, minute=0, second=0, microsecond=0)


def flagged_rate(session: Session) -> tuple[dict[str, list[tuple[datetime, float]]], list[StationStats], str]:
    """({station: [(bucket start, flagged / frames)]}, per-station totals, bucket name "hour"|"day")."""
    rows = session.execute(select(Run.station, Run.started_at, Run.frames, Run.flagged)).all()
    if not rows:
        return {}, [], "day"
    span = max(r.started_at for r in rows) - min(r.started_at for r in rows)
    hourly = span < timedelta(days=2)
    sums: dict[tuple[str, datetime], list[int]] = defaultdict(lambda: [0, 0])
    totals: dict[str, StationStats] = {}
    for r in rows:
        s = sums[(r.station, _bucket(r.started_at, hourly))]
        s[0] += r.frames or 0
        s[1] += r.flagged or 0
        t = totals.setdefault(r.station, StationStats(r.station, 0, 0, 0))
        t.runs += 1
        t.frames += r.frames or 0
        t.flagged += r.flagged or 0
    series: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for (station, bucket), (frames, flagged) in sorted(sums.items()):
        if frames:  # a run without frame counts yet says nothing about a rate
            series[station].append((bucket, flagged / frames))
    return dict(series), sorted(totals.values(), key=lambda s: s.station), "hour" if hourly else "day"


def model_stats(session: Session) -> list[ModelStats]:
    """Per model version: flagged records, standing defect and false-alarm verdicts."""
    counts = {mv: ModelStats(mv, n, 0, 0) for mv, n in
              session.execute(select(Record.model_version, func.count()).group_by(Record.model_version))}
    stmt = (select(Record.model_version, Verdict.verdict, func.count()).join(Record, Record.id == Verdict.record_id)
            .where(*standing_conditions()).group_by(Record.model_version, Verdict.verdict))
    for mv, verdict, n in session.execute(stmt):
        m = counts.setdefault(mv, ModelStats(mv, 0, 0, 0))
        if verdict == "defect":
            m.defects += n
        elif verdict == "false_alarm":
            m.false_alarms += n
    return sorted(counts.values(), key=lambda m: m.model_version)
