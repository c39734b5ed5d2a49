"""The uniform drift sample (`drift_sample`): a record whose request was drawn for it before routing, so that its
divergence figures measure the student on traffic routing did not select. A student-served one's figures are of
the answer it served; an escalated one's are of the student's whole answer to the same request, asked for off the
request path (`drift_answer`, `drift_tokens`; `teacher_scores` score it). Without the mark a reader could not tell
these figures, comparable across student versions, from the shadowed answers alone (which a better student, serving
more of the hard traffic, makes look worse). Records written before this read back with all three null.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shadow_records") as batch:
        batch.add_column(sa.Column("drift_sample", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("drift_answer", sa.Text(), nullable=True))
        batch.add_column(sa.Column("drift_tokens", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shadow_records") as batch:
        batch.drop_column("drift_tokens")
        batch.drop_column("drift_answer")
        batch.drop_column("drift_sample")
