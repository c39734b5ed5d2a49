"""Drift-sample jobs first (`shadow_jobs.drift`): the worker claims the jobs drawn for the drift sample before the
recorded escalations, oldest first within each. The drift alert and the canary read only that sample, and behind a
backlog of escalations (a teacher that serves most of a drifted traffic also answers each recorded one again, for
its top-k) a newly promoted version can go unmeasured: a CI run of the drift loop's test read `drift KL —` in the
first status line after the promotion, with 25 jobs waiting. Jobs stored before this (queued across an upgrade)
are ordinary ones.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shadow_jobs") as batch:
        batch.add_column(sa.Column("drift", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("shadow_jobs") as batch:
        batch.drop_column("drift")
