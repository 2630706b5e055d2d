"""task dependencies: an edge table and a per-task count of unsatisfied prerequisites

Revision ID: 0010
Revises: 0009

A dependent task is ready only when every task it depends on has completed with a
`dependencyAction` of satisfy. Each prerequisite is one row of `task_dependencies` (a range is
stored one row per member, up to the bound the service enforces), so completing a task finds its
dependents by an index seek on (job, prerequisite) and never scans the job. The dependent keeps
the number of its edges still unsatisfied in `tasks.unsatisfied`, and the scheduler's ready index
leads with (job, state, unsatisfied): blocked tasks stay `active` (counted as active, as on
Azure) yet no scheduling pass reads them.

The columns are added with ALTER TABLE (no batch mode), so SQLite keeps the counter triggers of
migration 0007 on `tasks`. Three more triggers keep `job_task_counts.blocked` (active tasks with
an unsatisfied prerequisite): autoscale's $ActiveTasks and $PendingTasks leave blocked tasks out,
as Batch's do, while the task counts API shows them as active.
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_SURROGATE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_OPEN = sa.column('satisfied', sa.Boolean) == sa.false()

_BLOCKED = "({r}.state = 'active' AND {r}.unsatisfied > 0)"
_BLOCKED_NEW, _BLOCKED_OLD = _BLOCKED.format(r="NEW"), _BLOCKED.format(r="OLD")
_UP = "UPDATE job_task_counts SET blocked = blocked + 1 WHERE job_seq = NEW.job_seq"
_DOWN = "UPDATE job_task_counts SET blocked = blocked - 1 WHERE job_seq = OLD.job_seq"
# (name, event, when, body); the update fires only when the task enters or leaves "blocked".
_TRIGGERS = (
    ("trg_tasks_blocked_insert", "INSERT", _BLOCKED_NEW, _UP),
    ("trg_tasks_blocked_delete", "DELETE", _BLOCKED_OLD, _DOWN),
    ("trg_tasks_blocked_update", "UPDATE OF state, unsatisfied", f"{_BLOCKED_NEW} <> {_BLOCKED_OLD}",
     f"UPDATE job_task_counts SET blocked = blocked + (CASE WHEN {_BLOCKED_NEW} THEN 1 ELSE -1 END) "
     "WHERE job_seq = NEW.job_seq"),
)


def _create_triggers() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, event, when, body in _TRIGGERS:
        if postgres:
            op.execute(f"CREATE FUNCTION shoal_{name}() RETURNS trigger LANGUAGE plpgsql AS "
                       f"$fn$ BEGIN {body}; RETURN NULL; END; $fn$")
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON tasks FOR EACH ROW WHEN ({when}) "
                       f"EXECUTE FUNCTION shoal_{name}()")
        else:
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON tasks WHEN {when} BEGIN {body}; END")


def _drop_triggers() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, _event, _when, _body in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON tasks" if postgres else f"DROP TRIGGER IF EXISTS {name}")
        if postgres:
            op.execute(f"DROP FUNCTION IF EXISTS shoal_{name}()")


def upgrade() -> None:
    op.add_column('tasks', sa.Column('unsatisfied', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('tasks', sa.Column('id_number', sa.BigInteger(), nullable=True))
    op.add_column('tasks', sa.Column('satisfies_dependents', sa.Boolean(), nullable=True))
    op.create_index('ix_tasks_job_id_number', 'tasks', ['job_seq', 'id_number'],
                    sqlite_where=sa.text("id_number IS NOT NULL"), postgresql_where=sa.text("id_number IS NOT NULL"))
    op.create_index('ix_tasks_ready', 'tasks', ['job_seq', 'state', 'unsatisfied', 'required_slots', 'seq'])
    op.drop_index('ix_tasks_job_state_slots_seq', table_name='tasks')
    op.create_table(
        'task_dependencies',
        sa.Column('seq', _SURROGATE, primary_key=True, autoincrement=True),
        sa.Column('job_seq', _SURROGATE, sa.ForeignKey('jobs.seq', ondelete='CASCADE'), nullable=False),
        sa.Column('task_seq', _SURROGATE, sa.ForeignKey('tasks.seq', ondelete='CASCADE'), nullable=False),
        sa.Column('prerequisite_key', sa.String(64), nullable=True),
        sa.Column('prerequisite_number', sa.BigInteger(), nullable=True),
        sa.Column('satisfied', sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index('ix_task_dependencies_task', 'task_dependencies', ['task_seq'])
    op.create_index('ix_task_dependencies_open_key', 'task_dependencies', ['job_seq', 'prerequisite_key'],
                    sqlite_where=_OPEN, postgresql_where=_OPEN)
    op.create_index('ix_task_dependencies_open_number', 'task_dependencies', ['job_seq', 'prerequisite_number'],
                    sqlite_where=_OPEN, postgresql_where=_OPEN)
    # Every task stored so far has unsatisfied = 0: nothing is blocked yet.
    op.add_column('job_task_counts', sa.Column('blocked', sa.BigInteger(), nullable=False, server_default='0'))
    _create_triggers()


def downgrade() -> None:
    _drop_triggers()
    op.drop_column('job_task_counts', 'blocked')
    op.drop_table('task_dependencies')
    op.create_index('ix_tasks_job_state_slots_seq', 'tasks', ['job_seq', 'state', 'required_slots', 'seq'])
    op.drop_index('ix_tasks_ready', table_name='tasks')
    op.drop_index('ix_tasks_job_id_number', table_name='tasks')
    # In place (SQLite 3.35+), not in batch mode: no index or trigger names these columns now.
    for column in ('satisfies_dependents', 'id_number', 'unsatisfied'):
        op.drop_column('tasks', column)
