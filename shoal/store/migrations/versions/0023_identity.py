"""identity: tenants, service principals with hashed client secrets, the token signing keys, and
each account's tenant and allowed authentication modes

Revision ID: 0023
Revises: 0022
"""
import sqlalchemy as sa
from alembic import op

revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tenants',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('name', sa.String(256), nullable=False),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        'principals',
        sa.Column('client_id', sa.String(36), primary_key=True),
        sa.Column('object_id', sa.String(36), nullable=False, unique=True),
        sa.Column('tenant_id', sa.String(36), sa.ForeignKey('tenants.id'), nullable=False),
        sa.Column('name', sa.String(256), nullable=False),
        sa.Column('secret_salt', sa.String(64), nullable=False),
        sa.Column('secret_hash', sa.String(128), nullable=False),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_principals_tenant_name', 'principals', ['tenant_id', 'name'])
    op.create_table(
        'signing_keys',
        sa.Column('kid', sa.String(64), primary_key=True),
        sa.Column('purpose', sa.String(16), nullable=False, unique=True),
        sa.Column('secret', sa.Text(), nullable=False),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column('accounts', sa.Column('tenant_id', sa.String(36)))
    op.add_column('accounts', sa.Column('allowed_auth_modes', sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table('accounts') as batch:
        batch.drop_column('allowed_auth_modes')
        batch.drop_column('tenant_id')
    op.drop_table('signing_keys')
    op.drop_table('principals')
    op.drop_table('tenants')
