"""application packages: the account's applications and the versioned zips stored for them

Revision ID: 0028
Revises: 0027

`applications` holds what the management side was given (display name, `allowUpdates`, default
version); `application_packages` one row per version, `pending` until its zip is in the
account's linked storage (`blob_container`/`blob_name`), `active` from then on. Only active
versions are shown by Application_List/Get and deployed to nodes.
"""
import sqlalchemy as sa
from alembic import op

revision = '0028'
down_revision = '0027'
branch_labels = None
depends_on = None

_SURROGATE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        'applications',
        sa.Column('seq', _SURROGATE, primary_key=True, autoincrement=True),
        sa.Column('account', sa.String(64), sa.ForeignKey('accounts.name'), nullable=False),
        sa.Column('id', sa.String(64), nullable=False),
        sa.Column('key', sa.String(64), nullable=False),
        sa.Column('display_name', sa.String(1024)),
        sa.Column('allow_updates', sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column('default_version', sa.String(64)),
        sa.Column('etag', sa.String(64), nullable=False),
        sa.Column('last_modified', sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('account', 'key', name='uq_applications_key'),
    )
    op.create_table(
        'application_packages',
        sa.Column('seq', _SURROGATE, primary_key=True, autoincrement=True),
        sa.Column('application_seq', sa.BigInteger(), sa.ForeignKey('applications.seq', ondelete='CASCADE'),
                  nullable=False),
        sa.Column('version', sa.String(64), nullable=False),
        sa.Column('version_key', sa.String(64), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('format', sa.String(8), nullable=False),
        sa.Column('blob_container', sa.String(63), nullable=False),
        sa.Column('blob_name', sa.String(1024), nullable=False),
        sa.Column('size_bytes', sa.BigInteger()),
        sa.Column('last_activation_time', sa.DateTime(timezone=True)),
        sa.Column('creation_time', sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('application_seq', 'version_key', name='uq_application_packages_version'),
    )


def downgrade() -> None:
    op.drop_table('application_packages')
    op.drop_table('applications')
