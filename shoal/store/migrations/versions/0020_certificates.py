"""certificates: the account's certificates, and the ones each node installed when it booted

Revision ID: 0020
Revises: 0018

`certificates` holds what Certificate_Add was given: the public certificate (`public_data`, shown
as `publicData`) and, for a pfx, the pfx itself and its password (`private_data`, `password`),
which only nodes of pools that reference the certificate are sent and no answer ever shows.
`nodes.certificate_references` are the references a node installed at its last boot: a pool's
later changes reach it only when it boots again, and a certificate a node holds cannot be deleted.
"""
import sqlalchemy as sa
from alembic import op

revision = '0020'
down_revision = '0018'
branch_labels = None
depends_on = None

_SURROGATE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        'certificates',
        sa.Column('seq', _SURROGATE, primary_key=True, autoincrement=True),
        sa.Column('account', sa.String(64), sa.ForeignKey('accounts.name'), nullable=False),
        sa.Column('thumbprint_algorithm', sa.String(16), nullable=False),
        sa.Column('thumbprint', sa.String(40), nullable=False),
        sa.Column('format', sa.String(8), nullable=False),
        sa.Column('public_data', sa.Text(), nullable=False),
        sa.Column('private_data', sa.Text()),
        sa.Column('password', sa.Text()),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('state_transition_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('previous_state', sa.String(16)),
        sa.Column('previous_state_transition_time', sa.DateTime(timezone=True)),
        sa.Column('delete_error', sa.JSON()),
        sa.UniqueConstraint('account', 'thumbprint_algorithm', 'thumbprint', name='uq_certificates_thumbprint'),
    )
    op.add_column('nodes', sa.Column('certificate_references', sa.JSON()))


def downgrade() -> None:
    op.drop_column('nodes', 'certificate_references')
    op.drop_table('certificates')
