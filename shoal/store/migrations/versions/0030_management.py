"""the management API's resource groups

Revision ID: 0030
Revises: 0029

`resource_groups` holds the Microsoft.Resources groups made through the management API
(shoal/api/management.py), one row per subscription and lower-cased name (ARM compares names
without case), with the name as given, its location and tags. The account's own group is made
at start-up.
"""
import sqlalchemy as sa
from alembic import op

revision = '0030'
down_revision = '0029'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'resource_groups',
        sa.Column('subscription', sa.String(36), primary_key=True),
        sa.Column('key', sa.String(90), primary_key=True),
        sa.Column('name', sa.String(90), nullable=False),
        sa.Column('location', sa.String(64), nullable=False),
        sa.Column('tags', sa.JSON(), nullable=False),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('resource_groups')
