"""task and node counters kept by triggers; (job, seq) index for keyset paging of task lists

Revision ID: 0007
Revises: 0006

The counters are maintained by triggers rather than by the service code so that no path that
inserts, deletes or moves a task or node (scheduler, agent reports, terminations, cascades) can
forget them, and so they change in the same transaction as the row. SQLite has only row
triggers; PostgreSQL uses statement triggers with transition tables for inserts and deletes
(a task collection or a job's deletion is one statement of many rows) and row triggers, filtered
by WHEN, for updates. Per-job counter rows are updated in job order so that two transactions
never take them in opposite orders.
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

BUCKETS = {
    "active": "{r}.state = 'active'",
    "running": "{r}.state IN ('running', 'preparing')",
    "completed": "{r}.state = 'completed'",
    "succeeded": "{r}.state = 'completed' AND {r}.outcome = 'success'",
    "failed": "{r}.state = 'completed' AND {r}.outcome = 'failure'",
}


def _terms(row: str) -> dict[str, str]:
    """Column -> this row's contribution to it (0, 1 or its slots)."""
    out = {}
    for name, condition in BUCKETS.items():
        cond = condition.format(r=row)
        out[name] = f"(CASE WHEN {cond} THEN 1 ELSE 0 END)"
        out[f"{name}_slots"] = f"(CASE WHEN {cond} THEN {row}.required_slots ELSE 0 END)"
    return out


def _row_delta(plus: str | None, minus: str | None) -> str:
    new, old = (_terms(plus) if plus else {}), (_terms(minus) if minus else {})
    parts = []
    for column in _terms("x"):
        expr = column
        if plus:
            expr += f" + {new[column]}"
        if minus:
            expr += f" - {old[column]}"
        parts.append(f"{column} = {expr}")
    return ", ".join(parts)


_TASK_CHANGED = ("OLD.state IS DISTINCT FROM NEW.state OR OLD.outcome IS DISTINCT FROM NEW.outcome "
                 "OR OLD.required_slots IS DISTINCT FROM NEW.required_slots")
_NODE_CHANGED = ("OLD.state IS DISTINCT FROM NEW.state OR OLD.is_dedicated IS DISTINCT FROM NEW.is_dedicated "
                 "OR OLD.pool_seq IS DISTINCT FROM NEW.pool_seq")
_NODE_UP = ("INSERT INTO pool_node_counts (pool_seq, is_dedicated, state, count) "
            "VALUES (NEW.pool_seq, NEW.is_dedicated, NEW.state, 1) "
            "ON CONFLICT (pool_seq, is_dedicated, state) DO UPDATE SET count = pool_node_counts.count + 1")
_NODE_DOWN = ("UPDATE pool_node_counts SET count = count - 1 WHERE pool_seq = OLD.pool_seq "
              "AND is_dedicated = OLD.is_dedicated AND state = OLD.state")
_JOB_ROW = "INSERT INTO job_task_counts (job_seq) VALUES (NEW.seq)"


def _sqlite_triggers() -> list[str]:
    return [
        f"CREATE TRIGGER trg_jobs_counts_insert AFTER INSERT ON jobs BEGIN {_JOB_ROW}; END",
        "CREATE TRIGGER trg_tasks_counts_insert AFTER INSERT ON tasks BEGIN "
        f"UPDATE job_task_counts SET {_row_delta('NEW', None)} WHERE job_seq = NEW.job_seq; END",
        "CREATE TRIGGER trg_tasks_counts_delete AFTER DELETE ON tasks BEGIN "
        f"UPDATE job_task_counts SET {_row_delta(None, 'OLD')} WHERE job_seq = OLD.job_seq; END",
        "CREATE TRIGGER trg_tasks_counts_update AFTER UPDATE OF state, outcome, required_slots ON tasks "
        f"WHEN {_TASK_CHANGED.replace('IS DISTINCT FROM', 'IS NOT')} BEGIN "
        f"UPDATE job_task_counts SET {_row_delta(None, 'OLD')} WHERE job_seq = OLD.job_seq; "
        f"UPDATE job_task_counts SET {_row_delta('NEW', None)} WHERE job_seq = NEW.job_seq; END",
        f"CREATE TRIGGER trg_nodes_counts_insert AFTER INSERT ON nodes BEGIN {_NODE_UP}; END",
        f"CREATE TRIGGER trg_nodes_counts_delete AFTER DELETE ON nodes BEGIN {_NODE_DOWN}; END",
        "CREATE TRIGGER trg_nodes_counts_update AFTER UPDATE OF state, is_dedicated, pool_seq ON nodes "
        f"WHEN {_NODE_CHANGED.replace('IS DISTINCT FROM', 'IS NOT')} BEGIN {_NODE_DOWN}; {_NODE_UP}; END",
    ]


def _pg_statement_sums(table: str, sign: str) -> str:
    """A loop, in job order, applying the summed contributions of a transition table."""
    terms = _terms("t")
    sums = ", ".join(f"SUM({expr}) AS {column}" for column, expr in terms.items())
    sets = ", ".join(f"{column} = job_task_counts.{column} {sign} d.{column}" for column in terms)
    return (f"DECLARE d record; BEGIN FOR d IN SELECT t.job_seq, {sums} FROM {table} t "
            f"GROUP BY t.job_seq ORDER BY t.job_seq LOOP "
            f"UPDATE job_task_counts SET {sets} WHERE job_task_counts.job_seq = d.job_seq; "
            f"END LOOP; RETURN NULL; END;")


def _pg_function(name: str, body: str) -> str:
    return f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$ {body} $fn$"


def _pg_triggers() -> list[str]:
    return [
        _pg_function("shoal_jobs_counts_insert", f"BEGIN {_JOB_ROW}; RETURN NULL; END;"),
        "CREATE TRIGGER trg_jobs_counts_insert AFTER INSERT ON jobs FOR EACH ROW "
        "EXECUTE FUNCTION shoal_jobs_counts_insert()",
        _pg_function("shoal_tasks_counts_insert", _pg_statement_sums("new_rows", "+")),
        "CREATE TRIGGER trg_tasks_counts_insert AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION shoal_tasks_counts_insert()",
        _pg_function("shoal_tasks_counts_delete", _pg_statement_sums("old_rows", "-")),
        "CREATE TRIGGER trg_tasks_counts_delete AFTER DELETE ON tasks REFERENCING OLD TABLE AS old_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION shoal_tasks_counts_delete()",
        _pg_function("shoal_tasks_counts_update",
                     f"BEGIN UPDATE job_task_counts SET {_row_delta('NEW', 'OLD')} WHERE job_seq = NEW.job_seq; "
                     "RETURN NULL; END;"),
        "CREATE TRIGGER trg_tasks_counts_update AFTER UPDATE OF state, outcome, required_slots ON tasks "
        f"FOR EACH ROW WHEN ({_TASK_CHANGED}) EXECUTE FUNCTION shoal_tasks_counts_update()",
        _pg_function("shoal_nodes_counts_insert", f"BEGIN {_NODE_UP}; RETURN NULL; END;"),
        "CREATE TRIGGER trg_nodes_counts_insert AFTER INSERT ON nodes FOR EACH ROW "
        "EXECUTE FUNCTION shoal_nodes_counts_insert()",
        _pg_function("shoal_nodes_counts_delete", f"BEGIN {_NODE_DOWN}; RETURN NULL; END;"),
        "CREATE TRIGGER trg_nodes_counts_delete AFTER DELETE ON nodes FOR EACH ROW "
        "EXECUTE FUNCTION shoal_nodes_counts_delete()",
        _pg_function("shoal_nodes_counts_update", f"BEGIN {_NODE_DOWN}; {_NODE_UP}; RETURN NULL; END;"),
        "CREATE TRIGGER trg_nodes_counts_update AFTER UPDATE OF state, is_dedicated, pool_seq ON nodes "
        f"FOR EACH ROW WHEN ({_NODE_CHANGED}) EXECUTE FUNCTION shoal_nodes_counts_update()",
    ]


_PG_FUNCTIONS = ("shoal_jobs_counts_insert", "shoal_tasks_counts_insert", "shoal_tasks_counts_delete",
                 "shoal_tasks_counts_update", "shoal_nodes_counts_insert", "shoal_nodes_counts_delete",
                 "shoal_nodes_counts_update")
_TRIGGERS = (("trg_jobs_counts_insert", "jobs"), ("trg_tasks_counts_insert", "tasks"),
             ("trg_tasks_counts_delete", "tasks"), ("trg_tasks_counts_update", "tasks"),
             ("trg_nodes_counts_insert", "nodes"), ("trg_nodes_counts_delete", "nodes"),
             ("trg_nodes_counts_update", "nodes"))


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index('ix_tasks_job_seq', ['job_seq', 'seq'], unique=False)
    surrogate = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    count_columns = [sa.Column(name, sa.BigInteger(), server_default='0', nullable=False) for name in _terms("x")]
    op.create_table('job_task_counts',
                    sa.Column('job_seq', surrogate, autoincrement=False, nullable=False),
                    *count_columns,
                    sa.ForeignKeyConstraint(['job_seq'], ['jobs.seq'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('job_seq'))
    op.create_table('pool_node_counts',
                    sa.Column('pool_seq', surrogate, nullable=False),
                    sa.Column('is_dedicated', sa.Boolean(), nullable=False),
                    sa.Column('state', sa.String(length=24), nullable=False),
                    sa.Column('count', sa.BigInteger(), server_default='0', nullable=False),
                    sa.ForeignKeyConstraint(['pool_seq'], ['pools.seq'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('pool_seq', 'is_dedicated', 'state', name='pk_pool_node_counts'))

    # Backfill from the rows as they are, then let the triggers keep the counts from here on.
    terms = _terms("t")
    columns = ", ".join(terms)
    sums = ", ".join(f"COALESCE(SUM({expr}), 0)" for expr in terms.values())
    op.execute(f"INSERT INTO job_task_counts (job_seq, {columns}) SELECT j.seq, {sums} "
               "FROM jobs j LEFT JOIN tasks t ON t.job_seq = j.seq GROUP BY j.seq")
    op.execute("INSERT INTO pool_node_counts (pool_seq, is_dedicated, state, count) "
               "SELECT pool_seq, is_dedicated, state, COUNT(*) FROM nodes GROUP BY pool_seq, is_dedicated, state")
    statements = _pg_triggers() if op.get_bind().dialect.name == "postgresql" else _sqlite_triggers()
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, table in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}" if postgres else f"DROP TRIGGER IF EXISTS {name}")
    if postgres:
        for function in _PG_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    op.drop_table('pool_node_counts')
    op.drop_table('job_task_counts')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_tasks_job_seq')
