"""a partial index of the nodes a provider's pass acts on

Revision ID: 0026
Revises: 0025

A provider's pass read every node record of the account on each wake-up (every allocation,
removal, goodbye): with 10,000 simulated nodes, a shrink's 10,000 goodbyes made passes over
10,000 rows back to back. The pass now reads the nodes in the states it acts on whatever their
agents do (creating, preempted, leaving, deallocating, deallocated) through this index, and the
nodes whose agents it saw end by id; a full read is the periodic safety net.
"""
import sqlalchemy as sa
from alembic import op

revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None

_PROVISIONING = "state IN ('creating', 'preempted', 'leavingpool', 'deallocating', 'deallocated')"


def upgrade() -> None:
    op.create_index('ix_nodes_provisioning', 'nodes', ['state'],
                    sqlite_where=sa.text(_PROVISIONING), postgresql_where=sa.text(_PROVISIONING))


def downgrade() -> None:
    op.drop_index('ix_nodes_provisioning', table_name='nodes')
