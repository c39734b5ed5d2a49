"""Records a trainer can learn from, and student versions.

- `shadow_records.token_ids`: the record's token entries carry token ids (`"id"`, and a third element in each `top`
  pair). Records written before this are marked false: their tokens are text only.
- `shadow_records.teacher_version`: the teacher weights that scored and answered (a trainer must not learn from
  targets of a teacher that has since changed).
- `student_versions`: every student a gateway may serve, with its state; `student_slot`: the one row that says
  which version is active (and which is the canary), read by every gateway process and replica.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shadow_records") as table:
        table.add_column(sa.Column("token_ids", sa.Boolean(), nullable=False, server_default=sa.false()))
        table.add_column(sa.Column("teacher_version", sa.String(128), nullable=True))
    op.create_table(
        "student_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("model_dir", sa.String(1024), nullable=True),
        sa.Column("adapter_path", sa.String(1024), nullable=True),
        sa.Column("base_url", sa.String(1024), nullable=True),
        sa.Column("served_model", sa.String(256), nullable=True),
        sa.Column("tokenizer_hash", sa.String(64), nullable=True),
        sa.Column("policy_file", sa.String(1024), nullable=True),
        sa.Column("figures", sa.JSON(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("previous", sa.String(64), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "student_slot",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("active", sa.String(64), nullable=True),
        sa.Column("canary", sa.String(64), nullable=True),
        sa.Column("canary_fraction", sa.Float(), nullable=False, server_default="0"),
        sa.Column("revision", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.execute("INSERT INTO student_slot (id, canary_fraction, revision) VALUES (1, 0, 0)")


def downgrade() -> None:
    op.drop_table("student_slot")
    op.drop_table("student_versions")
    with op.batch_alter_table("shadow_records") as table:
        table.drop_column("teacher_version")
        table.drop_column("token_ids")
