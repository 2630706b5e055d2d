"""node usage: when each node held its VM, for pool usage metrics and the usage ledger

Revision ID: 0018
Revises: 0017
"""
import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

_SURROGATE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        'node_usage',
        sa.Column('seq', _SURROGATE, primary_key=True, autoincrement=True),
        sa.Column('account', sa.String(64), nullable=False),
        sa.Column('pool_id', sa.String(64), nullable=False),
        sa.Column('vm_size', sa.String(64), nullable=False),
        sa.Column('node_id', sa.String(96), nullable=False),
        sa.Column('is_dedicated', sa.Boolean(), nullable=False),
        sa.Column('start_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('end_time', sa.DateTime(timezone=True)),
    )
    op.create_index('ix_node_usage_open', 'node_usage', ['node_id'], sqlite_where=sa.text('end_time IS NULL'),
                    postgresql_where=sa.text('end_time IS NULL'))
    op.create_index('ix_node_usage_end', 'node_usage', ['end_time'])


def downgrade() -> None:
    op.drop_table('node_usage')
