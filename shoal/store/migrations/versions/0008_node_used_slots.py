"""per-node used-slot counter kept by triggers; partial index of the nodes with a free slot

Revision ID: 0008
Revises: 0007

The scheduler wants a pool's nodes that have a free slot. Summing each node's running tasks
(ix_tasks_node_state_slots) is an index probe per node of the pool on every pass, and a pass
follows every agent report: at 10,000 full nodes that is 10,000 probes to find the one node a
report freed. With `used_slots` kept by triggers in the transaction of every task change (as the
counters of 0007 are) and a partial index on the nodes where it is below `slots`, the pass walks
only the nodes that can take work.
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# A task holds its slots on its node while it runs (as the scheduler counts them).
_CHANGED = ("OLD.state IS DISTINCT FROM NEW.state OR OLD.node_id IS DISTINCT FROM NEW.node_id "
            "OR OLD.required_slots IS DISTINCT FROM NEW.required_slots")
_RELEVANT = "(OLD.state = 'running' OR NEW.state = 'running')"
_RELEASE = ("UPDATE nodes SET used_slots = used_slots - OLD.required_slots "
            "WHERE id = OLD.node_id AND OLD.state = 'running'")
_TAKE = ("UPDATE nodes SET used_slots = used_slots + NEW.required_slots "
         "WHERE id = NEW.node_id AND NEW.state = 'running'")

_TRIGGERS = (("trg_tasks_node_slots_update", "tasks"), ("trg_tasks_node_slots_insert", "tasks"),
             ("trg_tasks_node_slots_delete", "tasks"))
_PG_FUNCTIONS = ("shoal_tasks_node_slots_update", "shoal_tasks_node_slots_insert", "shoal_tasks_node_slots_delete")


def _sqlite_triggers() -> list[str]:
    sqlite_changed = _CHANGED.replace("IS DISTINCT FROM", "IS NOT")
    return [
        "CREATE TRIGGER trg_tasks_node_slots_update AFTER UPDATE OF state, node_id, required_slots ON tasks "
        f"WHEN ({sqlite_changed}) AND {_RELEVANT} BEGIN {_RELEASE}; {_TAKE}; END",
        "CREATE TRIGGER trg_tasks_node_slots_insert AFTER INSERT ON tasks "
        f"WHEN NEW.state = 'running' BEGIN {_TAKE}; END",
        "CREATE TRIGGER trg_tasks_node_slots_delete AFTER DELETE ON tasks "
        f"WHEN OLD.state = 'running' BEGIN {_RELEASE}; END",
    ]


def _pg_function(name: str, body: str) -> str:
    return f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$ BEGIN {body}; RETURN NULL; END; $fn$"


def _pg_triggers() -> list[str]:
    return [
        _pg_function("shoal_tasks_node_slots_update", f"{_RELEASE}; {_TAKE}"),
        "CREATE TRIGGER trg_tasks_node_slots_update AFTER UPDATE OF state, node_id, required_slots ON tasks "
        f"FOR EACH ROW WHEN (({_CHANGED}) AND {_RELEVANT}) EXECUTE FUNCTION shoal_tasks_node_slots_update()",
        _pg_function("shoal_tasks_node_slots_insert", _TAKE),
        "CREATE TRIGGER trg_tasks_node_slots_insert AFTER INSERT ON tasks "
        "FOR EACH ROW WHEN (NEW.state = 'running') EXECUTE FUNCTION shoal_tasks_node_slots_insert()",
        _pg_function("shoal_tasks_node_slots_delete", _RELEASE),
        "CREATE TRIGGER trg_tasks_node_slots_delete AFTER DELETE ON tasks "
        "FOR EACH ROW WHEN (OLD.state = 'running') EXECUTE FUNCTION shoal_tasks_node_slots_delete()",
    ]


def upgrade() -> None:
    # Added in place (no batch rebuild of `nodes`, which would drop 0007's node triggers).
    op.add_column('nodes', sa.Column('used_slots', sa.Integer(), server_default='0', nullable=False))
    op.execute("UPDATE nodes SET used_slots = COALESCE((SELECT SUM(t.required_slots) FROM tasks t "
               "WHERE t.node_id = nodes.id AND t.state = 'running'), 0)")
    op.create_index('ix_nodes_free', 'nodes', ['pool_seq', 'allocation_time', 'id'],
                    sqlite_where=sa.text('used_slots < slots'), postgresql_where=sa.text('used_slots < slots'))
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
    op.drop_index('ix_nodes_free', table_name='nodes')
    # SQLite (3.35+) drops a column in place when no index or trigger names it.
    op.drop_column('nodes', 'used_slots')
