"""Results store: runs and records.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from inference.store.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("station", sa.String(200), nullable=False),
        sa.Column("source", sa.String(2000), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("flagged", sa.Integer(), nullable=False),
        sa.Column("dropped", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
    )
    op.create_table(
        "records",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("station", sa.String(200), nullable=False),
        sa.Column("source", sa.String(2000), nullable=False),
        sa.Column("frame_index", sa.Integer(), nullable=False),
        sa.Column("strip_y0", sa.Integer(), nullable=True),
        sa.Column("strip_y1", sa.Integer(), nullable=True),
        sa.Column("strip_x0", sa.Integer(), nullable=True),
        sa.Column("strip_x1", sa.Integer(), nullable=True),
        sa.Column("captured_at", UTCDateTime(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("is_defect", sa.Boolean(), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("image_path", sa.String(300), nullable=False),
        sa.Column("map_path", sa.String(300), nullable=False),
        sa.Column("overlay_path", sa.String(300), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
    )
    for col in ("run_id", "station", "captured_at", "score", "model_version"):
        op.create_index(f"ix_records_{col}", "records", [col])


def downgrade() -> None:
    for col in ("run_id", "station", "captured_at", "score", "model_version"):
        op.drop_index(f"ix_records_{col}", table_name="records")
    op.drop_table("records")
    op.drop_table("runs")
