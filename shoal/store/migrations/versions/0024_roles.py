"""roles: role definitions (Azure's built-ins and custom roles) and role assignments of
principals at ARM scopes

Revision ID: 0024
Revises: 0023
"""
import sqlalchemy as sa
from alembic import op

revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'role_definitions',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('name', sa.String(256), nullable=False),
        sa.Column('name_key', sa.String(256), nullable=False, unique=True),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('builtin', sa.Boolean(), nullable=False),
        sa.Column('permissions', sa.JSON(), nullable=False),
        sa.Column('assignable_scopes', sa.JSON(), nullable=False),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        'role_assignments',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('principal_id', sa.String(36), sa.ForeignKey('principals.object_id', ondelete='CASCADE'),
                  nullable=False),
        sa.Column('role_id', sa.String(36), sa.ForeignKey('role_definitions.id'), nullable=False),
        sa.Column('scope', sa.String(512), nullable=False),
        sa.Column('scope_key', sa.String(512), nullable=False),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('principal_id', 'role_id', 'scope_key', name='uq_role_assignments_principal_role_scope'),
    )
    op.create_index('ix_role_assignments_role', 'role_assignments', ['role_id'])


def downgrade() -> None:
    op.drop_index('ix_role_assignments_role', 'role_assignments')
    op.drop_table('role_assignments')
    op.drop_table('role_definitions')
