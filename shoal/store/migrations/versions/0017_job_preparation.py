"""job preparation and release tasks: one row per (job, node) they ran on

Revision ID: 0017
Revises: 0016

A job with a `jobPreparationTask` keeps, for every node it has given a task, what its
preparation and release tasks did there (semantics §3.4): their execution info as the API
shows it, their states as columns (for `$filter` in SQL) and what the node must run next
(`pending`: prep or release, with a `generation` that names the run). The node's agent is
handed its pending work through a partial index on the node; a terminating job finds its
owed releases through a partial index on the job; the scheduler reads a job's barred nodes
(prep failed, waitForSuccess) through a third. The job knows whether it has a preparation task
and whether its tasks wait for it (`prep_wait`: null without one), so placement reads no JSON.

Added with CREATE TABLE and ADD COLUMN (no batch mode): SQLite keeps the triggers on `jobs`.
"""
import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

_SURROGATE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column('jobs', sa.Column('prep_wait', sa.Boolean()))
    op.create_table(
        'job_node_tasks',
        sa.Column('seq', _SURROGATE, primary_key=True, autoincrement=True),
        sa.Column('job_seq', _SURROGATE, sa.ForeignKey('jobs.seq', ondelete='CASCADE'), nullable=False),
        sa.Column('node_id', sa.String(96), nullable=False),
        sa.Column('pool_id', sa.String(64), nullable=False),
        sa.Column('generation', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('pending', sa.String(8)),
        sa.Column('prep_state', sa.String(16)),
        sa.Column('prep_result', sa.String(8)),
        sa.Column('prep_info', sa.JSON()),
        sa.Column('release_state', sa.String(16)),
        sa.Column('release_info', sa.JSON()),
        sa.Column('barred', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.UniqueConstraint('job_seq', 'node_id', name='uq_job_node_tasks_job_node'),
    )
    op.create_index('ix_job_node_tasks_node', 'job_node_tasks', ['node_id'])
    op.create_index('ix_job_node_tasks_listed', 'job_node_tasks', ['job_seq', 'seq'],
                    sqlite_where=sa.text('prep_state IS NOT NULL'), postgresql_where=sa.text('prep_state IS NOT NULL'))
    op.create_index('ix_job_node_tasks_pending', 'job_node_tasks', ['node_id'],
                    sqlite_where=sa.text('pending IS NOT NULL'), postgresql_where=sa.text('pending IS NOT NULL'))
    op.create_index('ix_job_node_tasks_releases', 'job_node_tasks', ['job_seq'],
                    sqlite_where=sa.text("pending = 'release'"), postgresql_where=sa.text("pending = 'release'"))
    op.create_index('ix_job_node_tasks_barred', 'job_node_tasks', ['job_seq', 'node_id'],
                    # As SQLAlchemy writes the test of a boolean on each (SQLite: `= 1`), so the
                    # planner sees that a query's condition implies the index's.
                    sqlite_where=sa.text('barred = 1'), postgresql_where=sa.text('barred'))


def downgrade() -> None:
    op.drop_table('job_node_tasks')
    op.drop_column('jobs', 'prep_wait')
