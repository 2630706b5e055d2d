"""node logs and lifetime statistics: the control plane's copies of each node's agent log and
start-task stdout/stderr; the account's lifetime counters

Revision ID: 0025
Revises: 0024

The last bytes of each, sent by the agent (the start task's with the report that ends it, the
agent's own log now and then and when it leaves) or kept by the local provider when it finds an
agent dead, so they stay readable after the node is removed, preempted or crashes (issue 10
item 5). Keyed by pool and node id, not the node row, which they outlive; `removed` is set when
the node's record goes, and the rows go a retention after that. `lifetime_stats`: one row of
counters per account for Pool/Job_GetAllLifetimeStatistics (issue 10 item 8).
"""
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0025'
down_revision = '0024'
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
    op.create_table(
        'lifetime_stats',
        sa.Column('account', sa.String(64), primary_key=True),
        sa.Column('start_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_update_time', sa.DateTime(timezone=True), nullable=False),
        *[sa.Column(name, sa.BigInteger(), nullable=False) for name in ('succeeded', 'failed', 'retries')],
        *[sa.Column(name, sa.Float(), nullable=False) for name in (
            'wall_clock_seconds', 'wait_seconds', 'closed_core_seconds', 'open_dedicated_cores', 'open_core_epochs')],
    )
    op.create_index('ix_node_logs_removed', 'node_logs', ['removed'],
                    sqlite_where=sa.text('removed IS NOT NULL'), postgresql_where=sa.text('removed IS NOT NULL'))


    _count_existing_spans()


def _count_existing_spans() -> None:
    """The node spans already recorded, so that closing one later subtracts what was added.
    Task counters start at zero: the statistics begin now (their startTime says so)."""
    from shoal.model.catalog import find_vm_size

    conn = op.get_bind()
    spans = sa.table('node_usage', sa.column('account'), sa.column('vm_size'), sa.column('is_dedicated'),
                     sa.column('start_time', sa.DateTime(timezone=True)),
                     sa.column('end_time', sa.DateTime(timezone=True)))
    now = datetime.now(UTC)
    rows: dict[str, dict[str, Any]] = {}
    for span in conn.execute(sa.select(spans).where(spans.c.is_dedicated.is_(True))):
        size = find_vm_size(span.vm_size)
        cores = float(size.vcpus if size else 1)
        start = span.start_time if span.start_time.tzinfo else span.start_time.replace(tzinfo=UTC)
        row = rows.setdefault(span.account, {
            'account': span.account, 'start_time': now, 'last_update_time': now, 'succeeded': 0, 'failed': 0,
            'retries': 0, 'wall_clock_seconds': 0.0, 'wait_seconds': 0.0, 'closed_core_seconds': 0.0,
            'open_dedicated_cores': 0.0, 'open_core_epochs': 0.0})
        if span.end_time is None:
            row['open_dedicated_cores'] += cores
            row['open_core_epochs'] += cores * start.timestamp()
        else:
            end = span.end_time if span.end_time.tzinfo else span.end_time.replace(tzinfo=UTC)
            row['closed_core_seconds'] += cores * max(0.0, (end - start).total_seconds())
    if rows:
        table = sa.table('lifetime_stats', sa.column('start_time', sa.DateTime(timezone=True)),
                         sa.column('last_update_time', sa.DateTime(timezone=True)),
                         *[sa.column(name) for name in next(iter(rows.values())) if not name.endswith('time')])
        conn.execute(sa.insert(table), list(rows.values()))


def downgrade() -> None:
    op.drop_table('lifetime_stats')
    op.drop_index('ix_node_logs_removed', table_name='node_logs')
    op.drop_index('ix_node_logs_node', table_name='node_logs')
    op.drop_table('node_logs')
