"""The constraint each record's answer was generated under (`constraint`: the client's `structured_outputs` or
`response_format`, in vLLM's `structured_outputs` shape), and whether its divergence figures hold the teacher's
unconstrained scores to it (`constraint_masked`). Under a grammar the student's logprobs are those of the masked
distribution while the teacher's scoring applies no grammar: without the constraint a reader could not tell a
divergence the grammar made from one the student did, nor train on the answer as what it was. Records written
before this read back with both null: whether their answer was constrained is not known.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shadow_records") as batch:
        batch.add_column(sa.Column("constraint", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("constraint_masked", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shadow_records") as batch:
        batch.drop_column("constraint_masked")
        batch.drop_column("constraint")
