"""task outputs: the control plane's copy of each task's stdout and stderr (their last bytes)

Revision ID: 0021
Revises: 0018

One row per task, replaced by each attempt that ends: what the agent sent with its report, so a
task's output stays readable after its node is removed, preempted or lost (issue 10 item 5).
Goes with the task (cascade) or when its retention ends.
"""
import sqlalchemy as sa
from alembic import op

revision = '0021'
down_revision = '0018'
branch_labels = None
depends_on = None

_SURROGATE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        'task_outputs',
        sa.Column('task_seq', _SURROGATE, sa.ForeignKey('tasks.seq', ondelete='CASCADE'), primary_key=True,
                  autoincrement=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('node_id', sa.String(96), nullable=False),
        sa.Column('ended', sa.DateTime(timezone=True), nullable=False),
        sa.Column('stdout', sa.LargeBinary(), nullable=False),
        sa.Column('stdout_size', sa.BigInteger(), nullable=False),
        sa.Column('stderr', sa.LargeBinary(), nullable=False),
        sa.Column('stderr_size', sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('task_outputs')
