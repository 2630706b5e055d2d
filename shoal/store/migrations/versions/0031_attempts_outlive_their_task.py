"""task attempts outlive their task, for the node's recentTasks

Revision ID: 0031
Revises: 0030

Azure's node keeps listing, in `recentTasks`, a task of a job deleted since (recorded:
test_batch_extensions_live.json #100). An attempt now keeps the job and task ids and the
execution information it ended with, and its task's deletion only unlinks it (SET NULL). The table
is rebuilt with the new columns and every attempt it held is copied over, with its task's ids and
execution information as they are now (the foreign key's delete rule cannot be altered in place on
SQLite).
"""
import sqlalchemy as sa
from alembic import op

revision = '0031'
down_revision = '0030'
branch_labels = None
depends_on = None

_SURROGATE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _create(with_snapshot: bool, name: str = 'task_attempts') -> None:
    columns: list[sa.schema.SchemaItem] = [
        sa.Column('seq', _SURROGATE, primary_key=True, autoincrement=True),
        sa.Column('node_id', sa.String(96), nullable=False),
        sa.Column('task_seq', _SURROGATE, sa.ForeignKey('tasks.seq', ondelete='SET NULL' if with_snapshot
                                                        else 'CASCADE'), nullable=with_snapshot),
        sa.Column('end_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('end_state', sa.String(16), nullable=False),
    ]
    if with_snapshot:
        # A schedule's job ids are longer than 64 characters (migration 0011 widens jobs.id there).
        columns += [sa.Column('job_id', sa.String(64).with_variant(sa.String(96), 'postgresql'), nullable=False),
                    sa.Column('task_id', sa.String(64), nullable=False),
                    sa.Column('execution_info', sa.JSON, nullable=False)]
    op.create_table(name, *columns)


def _index() -> None:
    op.create_index('ix_task_attempts_node', 'task_attempts', ['node_id', 'end_time', 'seq'])
    op.create_index('ix_task_attempts_task', 'task_attempts', ['task_seq'])


def upgrade() -> None:
    _create(with_snapshot=True, name='task_attempts_kept')
    op.execute("INSERT INTO task_attempts_kept (seq, node_id, task_seq, end_time, end_state, job_id, task_id, "
               "execution_info) SELECT a.seq, a.node_id, a.task_seq, a.end_time, a.end_state, j.id, t.id, "
               "t.execution_info FROM task_attempts a JOIN tasks t ON t.seq = a.task_seq "
               "JOIN jobs j ON j.seq = t.job_seq")
    op.drop_table('task_attempts')
    op.rename_table('task_attempts_kept', 'task_attempts')
    _index()
    if op.get_bind().dialect.name == 'postgresql':
        # The copied rows keep their ids: the sequence goes on after them.
        op.execute("SELECT setval(pg_get_serial_sequence('task_attempts', 'seq'), "
                   "COALESCE((SELECT MAX(seq) FROM task_attempts), 0) + 1, false)")


def downgrade() -> None:
    _create(with_snapshot=False, name='task_attempts_old')
    op.execute("INSERT INTO task_attempts_old (seq, node_id, task_seq, end_time, end_state) "
               "SELECT seq, node_id, task_seq, end_time, end_state FROM task_attempts WHERE task_seq IS NOT NULL")
    op.drop_table('task_attempts')
    op.rename_table('task_attempts_old', 'task_attempts')
    _index()
