"""node logs: the control plane's copies of each node's agent log and start-task stdout/stderr

Revision ID: 0025
Revises: 0023

The last bytes of each, sent by the agent (the start task's with the report that ends it, the
agent's own log now and then and when it leaves) or kept by the local provider when it finds an
agent dead, so they stay readable after the node is removed, preempted or crashes (issue 10
item 5). Keyed by pool and node id, not the node row, which they outlive; `removed` is set when
the node's record goes, and the rows go a retention after that.
"""
import sqlalchemy as sa
from alembic import op

revision = '0025'
down_revision = '0023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'node_logs',
        sa.Column('account', sa.String(64), primary_key=True),
        sa.Column('pool_id', sa.String(64), primary_key=True),
        sa.Column('node_id', sa.String(96), primary_key=True),
        sa.Column('name', sa.String(32), primary_key=True),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('updated', sa.DateTime(timezone=True), nullable=False),
        sa.Column('removed', sa.DateTime(timezone=True)),
    )
    op.create_index('ix_node_logs_node', 'node_logs', ['node_id'])
    op.create_index('ix_node_logs_removed', 'node_logs', ['removed'],
                    sqlite_where=sa.text('removed IS NOT NULL'), postgresql_where=sa.text('removed IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_node_logs_removed', table_name='node_logs')
    op.drop_index('ix_node_logs_node', table_name='node_logs')
    op.drop_table('node_logs')
