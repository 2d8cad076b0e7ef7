"""Review app: users and verdicts, plus keyset-pagination indexes on records.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

The two composite indexes on `records` back the review queue's seek pagination
(ORDER BY captured_at DESC, id DESC / score DESC, id DESC with a
`(captured_at, id) < (cursor)` condition): the page is read straight off the index
instead of sorting the table, which keeps deep pages fast at 100k records.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from inference.store.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(100), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("username", name="uq_users_username"),
    )
    op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("record_id", sa.String(32), sa.ForeignKey("records.id"), nullable=False),
        sa.Column("verdict", sa.String(20), nullable=False),
        sa.Column("defect_class", sa.String(100), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("reviewer", sa.String(100), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("undone_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_verdicts_record_id", "verdicts", ["record_id"])
    op.create_index("ix_verdicts_reviewer", "verdicts", ["reviewer"])
    op.create_index("ix_records_captured_at_id", "records", ["captured_at", "id"])
    op.create_index("ix_records_score_id", "records", ["score", "id"])


def downgrade() -> None:
    op.drop_index("ix_records_score_id", table_name="records")
    op.drop_index("ix_records_captured_at_id", table_name="records")
    op.drop_index("ix_verdicts_reviewer", table_name="verdicts")
    op.drop_index("ix_verdicts_record_id", table_name="verdicts")
    op.drop_table("verdicts")
    op.drop_table("users")
