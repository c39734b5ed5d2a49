"""Shadow jobs persisted before they are acknowledged: a job survives a crash as a row until the worker completes it.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shadow_jobs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim", sa.String(32), nullable=True),
    )
    op.create_index("ix_shadow_jobs_claimed_until", "shadow_jobs", ["claimed_until"])


def downgrade() -> None:
    op.drop_index("ix_shadow_jobs_claimed_until", table_name="shadow_jobs")
    op.drop_table("shadow_jobs")
