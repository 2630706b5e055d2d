"""task attempts outlive their task, for the node's recentTasks

Revision ID: 0030
Revises: 0029

Azure's node keeps listing, in `recentTasks`, a task of a job deleted since (recorded:
test_batch_extensions_live.json #100). An attempt now keeps the job and task ids and the
execution information it ended with, and its task's deletion only unlinks it (SET NULL). The table
only ever fed the last ten tasks a node shows, so it is made afresh: nodes forget the tasks they ran
before the upgrade.
"""
import sqlalchemy as sa
from alembic import op

revision = '0030'
down_revision = '0029'
branch_labels = None
depends_on = None

_SURROGATE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _create(with_snapshot: bool) -> None:
    columns: list[sa.schema.SchemaItem] = [
        sa.Column('seq', _SURROGATE, primary_key=True, autoincrement=True),
        sa.Column('node_id', sa.String(96), nullable=False),
        sa.Column('task_seq', _SURROGATE, sa.ForeignKey('tasks.seq', ondelete='SET NULL' if with_snapshot
                                                        else 'CASCADE'), nullable=with_snapshot),
        sa.Column('end_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('end_state', sa.String(16), nullable=False),
    ]
    if with_snapshot:
        columns += [sa.Column('job_id', sa.String(64), nullable=False),
                    sa.Column('task_id', sa.String(64), nullable=False),
                    sa.Column('execution_info', sa.JSON, nullable=False)]
    op.create_table('task_attempts', *columns)
    op.create_index('ix_task_attempts_node', 'task_attempts', ['node_id', 'end_time', 'seq'])
    op.create_index('ix_task_attempts_task', 'task_attempts', ['task_seq'])


def upgrade() -> None:
    op.drop_table('task_attempts')
    _create(with_snapshot=True)


def downgrade() -> None:
    op.drop_table('task_attempts')
    _create(with_snapshot=False)
