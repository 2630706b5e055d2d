"""multi-instance tasks: the task's instance count and one row per instance (subtask)

Revision ID: 0027
Revises: 0026

`tasks.instances` is 0 for an ordinary task and numberOfInstances for a multi-instance one. It
joins the scheduler's ready index ahead of requiredSlots, so the ordinary per-size queues
(instances = 0) and the multi-instance queues (one per instance count) are each an index seek:
neither walks past the other's tasks, however many a job holds.

`subtasks` holds the instances of a multi-instance task's current attempt (0 = the primary,
which is also the task row's node). An instance above 0 holds one slot on its node while it
runs, kept in `nodes.used_slots` by triggers as 0008 does for tasks: the primary's slot is the
task row's own.

`job_task_counts.extra_instances` sums `instances - 1` over a job's ready (active, unblocked)
multi-instance tasks, kept by triggers as 0010 keeps `blocked`: autoscale's $ActiveTasks counts
such a task numberOfInstances times, as Batch does, without a count over tasks.
"""
import sqlalchemy as sa
from alembic import op

revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None

_CHANGED = "OLD.state IS DISTINCT FROM NEW.state OR OLD.node_id IS DISTINCT FROM NEW.node_id"
_RELEVANT = "(OLD.state = 'running' OR NEW.state = 'running') AND NEW.instance > 0"
_RELEASE = "UPDATE nodes SET used_slots = used_slots - 1 WHERE id = OLD.node_id AND OLD.state = 'running'"
_TAKE = "UPDATE nodes SET used_slots = used_slots + 1 WHERE id = NEW.node_id AND NEW.state = 'running'"
_TRIGGERS = ("trg_subtasks_node_slots_update", "trg_subtasks_node_slots_insert", "trg_subtasks_node_slots_delete")
_READY_COLUMNS = ['job_seq', 'state', 'unsatisfied', 'required_slots', 'seq']

_READY_GANG = "({r}.state = 'active' AND {r}.unsatisfied = 0 AND {r}.instances > 1)"
_GANG_NEW, _GANG_OLD = _READY_GANG.format(r="NEW"), _READY_GANG.format(r="OLD")
# (name, event, when, body) on tasks; `instances` never changes once a task is stored.
_COUNT_TRIGGERS = (
    ("trg_tasks_extra_instances_insert", "INSERT", _GANG_NEW,
     "UPDATE job_task_counts SET extra_instances = extra_instances + NEW.instances - 1 WHERE job_seq = NEW.job_seq"),
    ("trg_tasks_extra_instances_delete", "DELETE", _GANG_OLD,
     "UPDATE job_task_counts SET extra_instances = extra_instances - OLD.instances + 1 WHERE job_seq = OLD.job_seq"),
    ("trg_tasks_extra_instances_update", "UPDATE OF state, unsatisfied", f"{_GANG_NEW} <> {_GANG_OLD}",
     f"UPDATE job_task_counts SET extra_instances = extra_instances + (CASE WHEN {_GANG_NEW} THEN "
     "NEW.instances - 1 ELSE 1 - OLD.instances END) WHERE job_seq = NEW.job_seq"),
)


def _count_trigger_statements(postgres: bool) -> list[str]:
    out = []
    for name, event, when, body in _COUNT_TRIGGERS:
        if postgres:
            out.append(f"CREATE FUNCTION shoal_{name}() RETURNS trigger LANGUAGE plpgsql AS "
                       f"$fn$ BEGIN {body}; RETURN NULL; END; $fn$")
            out.append(f"CREATE TRIGGER {name} AFTER {event} ON tasks FOR EACH ROW WHEN ({when}) "
                       f"EXECUTE FUNCTION shoal_{name}()")
        else:
            out.append(f"CREATE TRIGGER {name} AFTER {event} ON tasks WHEN {when} BEGIN {body}; END")
    return out


def _sqlite_triggers() -> list[str]:
    changed = _CHANGED.replace("IS DISTINCT FROM", "IS NOT")
    return [
        "CREATE TRIGGER trg_subtasks_node_slots_update AFTER UPDATE OF state, node_id ON subtasks "
        f"WHEN ({changed}) AND {_RELEVANT} BEGIN {_RELEASE}; {_TAKE}; END",
        "CREATE TRIGGER trg_subtasks_node_slots_insert AFTER INSERT ON subtasks "
        f"WHEN NEW.state = 'running' AND NEW.instance > 0 BEGIN {_TAKE}; END",
        "CREATE TRIGGER trg_subtasks_node_slots_delete AFTER DELETE ON subtasks "
        f"WHEN OLD.state = 'running' AND OLD.instance > 0 BEGIN {_RELEASE}; END",
    ]


def _pg_function(name: str, body: str) -> str:
    return f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$ BEGIN {body}; RETURN NULL; END; $fn$"


def _pg_triggers() -> list[str]:
    return [
        _pg_function("shoal_subtasks_node_slots_update", f"{_RELEASE}; {_TAKE}"),
        "CREATE TRIGGER trg_subtasks_node_slots_update AFTER UPDATE OF state, node_id ON subtasks "
        f"FOR EACH ROW WHEN (({_CHANGED}) AND {_RELEVANT}) EXECUTE FUNCTION shoal_subtasks_node_slots_update()",
        _pg_function("shoal_subtasks_node_slots_insert", _TAKE),
        "CREATE TRIGGER trg_subtasks_node_slots_insert AFTER INSERT ON subtasks FOR EACH ROW "
        "WHEN (NEW.state = 'running' AND NEW.instance > 0) EXECUTE FUNCTION shoal_subtasks_node_slots_insert()",
        _pg_function("shoal_subtasks_node_slots_delete", _RELEASE),
        "CREATE TRIGGER trg_subtasks_node_slots_delete AFTER DELETE ON subtasks FOR EACH ROW "
        "WHEN (OLD.state = 'running' AND OLD.instance > 0) EXECUTE FUNCTION shoal_subtasks_node_slots_delete()",
    ]


def upgrade() -> None:
    # Added in place (no batch rebuild of `tasks`, which would drop 0008's triggers).
    op.add_column('tasks', sa.Column('instances', sa.Integer(), server_default='0', nullable=False))
    op.drop_index('ix_tasks_ready', table_name='tasks')
    op.create_index('ix_tasks_ready', 'tasks', ['job_seq', 'state', 'unsatisfied', 'instances', 'required_slots', 'seq'])
    op.create_table(
        'subtasks',
        sa.Column('task_seq', sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  sa.ForeignKey('tasks.seq', ondelete='CASCADE'), primary_key=True),
        sa.Column('instance', sa.Integer(), primary_key=True),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('node_id', sa.String(96), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('previous_state', sa.String(16)),
        sa.Column('state_transition_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('previous_state_transition_time', sa.DateTime(timezone=True)),
        sa.Column('start_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('end_time', sa.DateTime(timezone=True)),
        sa.Column('exit_code', sa.Integer()),
        sa.Column('failure_info', sa.JSON()),
        sa.Column('result', sa.String(8)),
        sa.Column('node_info', sa.JSON(), nullable=False),
    )
    op.create_index('ix_subtasks_node_state', 'subtasks', ['node_id', 'state'])
    # No stored task is a multi-instance one yet: nothing to count.
    op.add_column('job_task_counts', sa.Column('extra_instances', sa.BigInteger(), nullable=False,
                                               server_default='0'))
    postgres = op.get_bind().dialect.name == "postgresql"
    statements = _pg_triggers() if postgres else _sqlite_triggers()
    for statement in [*statements, *_count_trigger_statements(postgres)]:
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, _event, _when, _body in _COUNT_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON tasks" if postgres else f"DROP TRIGGER IF EXISTS {name}")
        if postgres:
            op.execute(f"DROP FUNCTION IF EXISTS shoal_{name}()")
    op.drop_column('job_task_counts', 'extra_instances')
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON subtasks" if postgres else f"DROP TRIGGER IF EXISTS {name}")
    if postgres:
        for name in _TRIGGERS:
            op.execute(f"DROP FUNCTION IF EXISTS {name.replace('trg_', 'shoal_')}()")
    op.drop_table('subtasks')
    op.drop_index('ix_tasks_ready', table_name='tasks')
    op.create_index('ix_tasks_ready', 'tasks', _READY_COLUMNS)
    op.drop_column('tasks', 'instances')
