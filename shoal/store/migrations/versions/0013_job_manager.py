"""job manager task: the job knows its manager's task and placement rules

Revision ID: 0013
Revises: 0010

A job created with a `jobManagerTask` gets it as a task in the same transaction; the job keeps
that task's seq and its two placement rules (runExclusive, allowLowPriorityNode=false) as
columns, so a scheduling pass reads them with the job rows it reads anyway and finds the nodes
running an exclusive manager by a primary-key seek per such job, never parsing JSON per task.

Added with ALTER TABLE (no batch mode), so SQLite keeps the triggers of earlier migrations.
"""
import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0011'
branch_labels = None
depends_on = None

_SURROGATE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column('jobs', sa.Column('manager_seq', _SURROGATE))
    op.add_column('jobs', sa.Column('manager_exclusive', sa.Boolean()))
    op.add_column('jobs', sa.Column('manager_dedicated_only', sa.Boolean()))


def downgrade() -> None:
    for column in ('manager_dedicated_only', 'manager_exclusive', 'manager_seq'):
        op.drop_column('jobs', column)
