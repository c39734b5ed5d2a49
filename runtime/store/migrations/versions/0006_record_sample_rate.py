"""The chance each record was kept (`sample_rate`): `shadow.sample_rate` for a sampled student answer, 1 for an
escalation (every one is kept). Weighting records by its inverse gives back the traffic they came from, which the
trainer needs to fit a routing threshold to a share of *traffic*, not of records (escalations are all there).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shadow_records") as batch:
        batch.add_column(sa.Column("sample_rate", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shadow_records") as batch:
        batch.drop_column("sample_rate")
