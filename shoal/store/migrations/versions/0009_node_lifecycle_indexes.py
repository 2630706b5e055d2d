"""partial indexes of the few nodes two lifecycle duties look for every half second

Revision ID: 0009
Revises: 0008

Spot recovery wants the preempted nodes, and the node-operations duty the nodes with a reboot or
reimage waiting. Both ran every pass as scans of every node record: at 10,000 nodes, two table
scans a second for what is nearly always nothing. A partial index on each holds only those nodes,
so each pass costs what it finds.
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_PREEMPTED = "state = 'preempted'"
_PENDING = "pending_action IS NOT NULL"


def upgrade() -> None:
    op.create_index('ix_nodes_preempted', 'nodes', ['state_transition_time'],
                    sqlite_where=sa.text(_PREEMPTED), postgresql_where=sa.text(_PREEMPTED))
    op.create_index('ix_nodes_pending_action', 'nodes', ['id'],
                    sqlite_where=sa.text(_PENDING), postgresql_where=sa.text(_PENDING))


def downgrade() -> None:
    op.drop_index('ix_nodes_pending_action', table_name='nodes')
    op.drop_index('ix_nodes_preempted', table_name='nodes')
