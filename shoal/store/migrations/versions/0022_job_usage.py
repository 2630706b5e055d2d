"""job usage: what each job's task attempts used, per pool, VM size and node kind (the ledger)

Revision ID: 0022
Revises: 0021

A counter row per (account, job, pool, VM size, dedicated or spot), added to in the transaction
that ends each attempt on a node: its attempts, slot-seconds and core-seconds. Rows outlive the
job (a ledger of what was used), so nothing cascades here.
"""
import sqlalchemy as sa
from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'job_usage',
        sa.Column('account', sa.String(64), nullable=False),
        sa.Column('job_id', sa.String(64), nullable=False),
        sa.Column('pool_id', sa.String(64), nullable=False),
        sa.Column('vm_size', sa.String(64), nullable=False),
        sa.Column('is_dedicated', sa.Boolean(), nullable=False),
        sa.Column('attempts', sa.BigInteger(), nullable=False),
        sa.Column('slot_seconds', sa.Float(), nullable=False),
        sa.Column('core_seconds', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('account', 'job_id', 'pool_id', 'vm_size', 'is_dedicated', name='pk_job_usage'),
    )


def downgrade() -> None:
    op.drop_table('job_usage')
