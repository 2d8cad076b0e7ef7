"""Review tables `users` and `verdicts` on the results store's declarative `Base`.

The names and columns are the contract shared with the results store (migration
0002, inference/store/migrations/versions/0002_review.py):

    users:    id (int pk), username (unique), password_hash (bcrypt), role ("reviewer"|"admin"), created_at (UTC)
    verdicts: id (int pk), record_id (fk records.id, indexed), verdict ("defect"|"false_alarm"),
              defect_class (nullable), comment (nullable), reviewer (username), created_at (UTC),
              undone_at (nullable)

Verdicts are never deleted or edited: undo sets `undone_at`, so the table is the audit
trail. The status of a record is its latest verdict that is not undone (none:
"unreviewed").
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from inference.store.models import Base, UTCDateTime, utcnow

ROLES = ("reviewer", "admin")
VERDICTS = ("defect", "false_alarm")
#: Queue status of a record without a standing verdict.
UNREVIEWED = "unreviewed"
STATUSES = (UNREVIEWED, *VERDICTS)


class User(Base):
    """A person who may log in to the review app."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20), default="reviewer")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Verdict(Base):
    """One reviewer decision on one flagged record (kept after undo, with `undone_at` set)."""

    __tablename__ = "verdicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    record_id: Mapped[str] = mapped_column(String(32), ForeignKey("records.id"), index=True)
    verdict: Mapped[str] = mapped_column(String(20))
    defect_class: Mapped[Optional[str]] = mapped_column(String(100), nullable=True)
    comment: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    reviewer: Mapped[str] = mapped_column(String(100), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    undone_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime(), nullable=True)
