"""The first shadow store: one table of shadow and escalation records.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shadow_records",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("student_model", sa.String(256), nullable=False),
        sa.Column("student_version", sa.String(128), nullable=True),
        sa.Column("adapter_version", sa.String(128), nullable=True),
        sa.Column("teacher_model", sa.String(256), nullable=False),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("route_reason", sa.String(64), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("prompt", sa.JSON(), nullable=False),
        sa.Column("student_answer", sa.Text(), nullable=False),
        sa.Column("student_tokens", sa.JSON(), nullable=False),
        sa.Column("teacher_scores", sa.JSON(), nullable=True),
        sa.Column("teacher_answer", sa.Text(), nullable=True),
        sa.Column("teacher_tokens", sa.JSON(), nullable=True),
        sa.Column("aligned", sa.Boolean(), nullable=True),
        sa.Column("mean_kl", sa.Float(), nullable=True),
        sa.Column("top1_agreement", sa.Float(), nullable=True),
        sa.Column("teacher_nll", sa.Float(), nullable=True),
        sa.Column("answers_agree", sa.Boolean(), nullable=True),
        sa.Column("field_agreement", sa.Float(), nullable=True),
    )
    op.create_index("ix_shadow_records_created_at", "shadow_records", ["created_at"])
    op.create_index("ix_shadow_records_kind_created_at", "shadow_records", ["kind", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_shadow_records_kind_created_at", table_name="shadow_records")
    op.drop_index("ix_shadow_records_created_at", table_name="shadow_records")
    op.drop_table("shadow_records")
