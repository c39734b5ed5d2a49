"""A student version's own mid-stream handoff floor (`handoff_min_prob`), refitted by the trainer so that the
new student's teacher share meets the target; null: the gateway's `routing.handoff.min_prob`.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("student_versions") as batch:
        batch.add_column(sa.Column("handoff_min_prob", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("student_versions") as batch:
        batch.drop_column("handoff_min_prob")
