"""job schedules, and the schedule a job came from

Revision ID: 0011
Revises: 0010

A job schedule is a record of its own, read by the schedule duty through an index on when it is
due next (a seek, never a scan of every schedule). Jobs learn which schedule made them, so a
schedule lists and deletes its jobs through an index. A schedule's jobs are named
`<scheduleId>:job-<n>`, longer than 64 characters for the longest schedule ids: PostgreSQL gets
wider job ids (SQLite does not enforce lengths, and rebuilding `jobs` there would drop its
counter triggers, see schema.py).
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        'job_schedules',
        sa.Column('seq', _ID, primary_key=True, autoincrement=True),
        sa.Column('account', sa.String(64), sa.ForeignKey('accounts.name'), nullable=False),
        sa.Column('id', sa.String(64), nullable=False),
        sa.Column('key', sa.String(64), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('previous_state', sa.String(16)),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('execution_info', sa.JSON(), nullable=False),
        sa.Column('job_count', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('active_job_seq', _ID),
        sa.Column('auto_pool_id', sa.String(64)),
        sa.Column('due_at', sa.DateTime(timezone=True)),
        sa.Column('etag', sa.String(40), nullable=False),
        sa.Column('last_modified', sa.DateTime(timezone=True), nullable=False),
        sa.Column('creation_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('state_transition_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('previous_state_transition_time', sa.DateTime(timezone=True)),
        sa.UniqueConstraint('account', 'key', name='uq_job_schedules_account_key'),
    )
    op.create_index('ix_job_schedules_due', 'job_schedules', ['due_at'])
    op.create_index('ix_job_schedules_state', 'job_schedules', ['account', 'state'])
    # ADD COLUMN, not a batch rebuild: the triggers on `jobs` stay.
    op.add_column('jobs', sa.Column('schedule_seq', _ID, nullable=True))
    op.create_index('ix_jobs_schedule', 'jobs', ['schedule_seq', 'seq'])
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('jobs', 'id', type_=sa.String(96))
        op.alter_column('jobs', 'key', type_=sa.String(96))


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('jobs', 'key', type_=sa.String(64))
        op.alter_column('jobs', 'id', type_=sa.String(64))
    op.drop_index('ix_jobs_schedule', table_name='jobs')
    op.drop_column('jobs', 'schedule_seq')
    op.drop_index('ix_job_schedules_state', table_name='job_schedules')
    op.drop_index('ix_job_schedules_due', table_name='job_schedules')
    op.drop_table('job_schedules')
