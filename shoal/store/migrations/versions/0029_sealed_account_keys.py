"""account keys may be kept sealed

Revision ID: 0029
Revises: 0028

With a secrets key configured (shoal/store/sealing.py) an account key is kept as
``sealed:v1:`` and the base64 of a nonce, the key's ciphertext and its tag: about 170
characters for an 88-character key, which the 128-character columns could not hold on PostgreSQL;
they become 256.
"""
import sqlalchemy as sa
from alembic import op

revision = '0029'
down_revision = '0028'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite does not enforce a VARCHAR's length.
    if op.get_bind().dialect.name != 'postgresql':
        return
    for column in ('primary_key', 'secondary_key'):
        op.alter_column('accounts', column, type_=sa.String(256), existing_type=sa.String(128),
                        existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for column in ('primary_key', 'secondary_key'):
        op.alter_column('accounts', column, type_=sa.String(128), existing_type=sa.String(256),
                        existing_nullable=False)
