"""task attempts: each attempt that ended on a node, for the node's recentTasks

Revision ID: 0016
Revises: 0015

A row per attempt that left a node (completed, retried or requeued), indexed by node for the
node's most recent tasks (a bounded index walk per node) and by task for its cascade delete.
"""
import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

_SURROGATE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        'task_attempts',
        sa.Column('seq', _SURROGATE, primary_key=True, autoincrement=True),
        sa.Column('node_id', sa.String(96), nullable=False),
        sa.Column('task_seq', _SURROGATE, sa.ForeignKey('tasks.seq', ondelete='CASCADE'), nullable=False),
        sa.Column('end_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('end_state', sa.String(16), nullable=False),
    )
    op.create_index('ix_task_attempts_node', 'task_attempts', ['node_id', 'end_time', 'seq'])
    op.create_index('ix_task_attempts_task', 'task_attempts', ['task_seq'])


def downgrade() -> None:
    op.drop_table('task_attempts')
