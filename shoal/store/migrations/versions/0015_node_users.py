"""node users: login accounts on a node, and the port of its SSH server

Revision ID: 0015
Revises: 0013

`node_users` holds the users ComputeNode_AddUser makes, keyed by node (removed with it);
`nodes.ssh_port` is where the node's agent accepts SSH logins for them.
"""
import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('nodes', sa.Column('ssh_port', sa.Integer()))
    op.create_table(
        'node_users',
        sa.Column('node_id', sa.String(96), sa.ForeignKey('nodes.id', ondelete='CASCADE'), nullable=False),
        sa.Column('name', sa.String(64), nullable=False),
        sa.Column('is_admin', sa.Boolean(), nullable=False),
        sa.Column('expiry_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('password_hash', sa.String(256)),
        sa.Column('ssh_public_key', sa.Text()),
        sa.PrimaryKeyConstraint('node_id', 'name', name='pk_node_users'),
    )


def downgrade() -> None:
    op.drop_table('node_users')
    op.drop_column('nodes', 'ssh_port')
