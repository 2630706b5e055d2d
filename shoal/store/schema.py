"""The store's tables (SQLAlchemy Core).

Resources keep the properties Shoal queries or changes as columns and the rest of what the
client sent as a JSON `spec`, so the wire format can grow without a migration for every
property. Ids are case-preserving but unique case-insensitively, as in Batch: `key` is the
lower-cased id.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    true,
)

from shoal.model.states import PROVISIONING_NODE_STATES, NodeState

metadata = MetaData()

# BigInteger ids become SQLite's rowid alias only when declared INTEGER.
SurrogateId = BigInteger().with_variant(Integer(), "sqlite")

_ACCOUNT_KEY = String(128).with_variant(String(256), "postgresql")

accounts = Table(
    "accounts",
    metadata,
    Column("name", String(64), primary_key=True),
    # The keys, sealed when a secrets key is configured (store/sealing.py): ~170 characters then,
    # which migration 0029 makes room for on PostgreSQL (SQLite does not enforce lengths).
    Column("primary_key", _ACCOUNT_KEY, nullable=False),
    Column("secondary_key", _ACCOUNT_KEY, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    # The Entra-style tenant whose principals' tokens the account accepts (service/principals.py).
    Column("tenant_id", String(36)),
    # SharedKey, AAD, TaskAuthenticationToken; None: all three.
    Column("allowed_auth_modes", JSON),
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
)

# App registrations and their service principals, one row each: the client id is the
# application's, the object id the principal's. Only a salted hash of the secret is kept.
principals = Table(
    "principals",
    metadata,
    Column("client_id", String(36), primary_key=True),
    Column("object_id", String(36), nullable=False, unique=True),
    Column("tenant_id", String(36), ForeignKey("tenants.id"), nullable=False),
    Column("name", String(256), nullable=False),
    Column("secret_salt", String(64), nullable=False),
    Column("secret_hash", String(128), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Index("ix_principals_tenant_name", "tenant_id", "name"),
)

# Role definitions: Azure's built-ins (service/builtin_roles.py, written at every start) and
# custom roles; each holds one block of actions, notActions, dataActions and notDataActions.
role_definitions = Table(
    "role_definitions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(256), nullable=False),
    # The name folded to lower case: role names are unique without regard to case.
    Column("name_key", String(256), nullable=False, unique=True),
    Column("description", Text, nullable=False),
    Column("builtin", Boolean, nullable=False),
    Column("permissions", JSON, nullable=False),
    Column("assignable_scopes", JSON, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
)

# The resource groups of the management API (Microsoft.Resources), by subscription; ARM's names
# compare without case, so each is kept by its lower-cased `key` too (service/resource_groups.py).
resource_groups = Table(
    "resource_groups",
    metadata,
    Column("subscription", String(36), primary_key=True),
    Column("key", String(90), primary_key=True),
    Column("name", String(90), nullable=False),
    Column("location", String(64), nullable=False),
    Column("tags", JSON, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
)

# Who holds which role where: a principal (by object id) x a role x an ARM scope. Read by
# principal, one principal at a time (its effective permissions are cached by the API).
role_assignments = Table(
    "role_assignments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("principal_id", String(36), ForeignKey("principals.object_id", ondelete="CASCADE"), nullable=False),
    Column("role_id", String(36), ForeignKey("role_definitions.id"), nullable=False),
    Column("scope", String(512), nullable=False),
    Column("scope_key", String(512), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    UniqueConstraint("principal_id", "role_id", "scope_key", name="uq_role_assignments_principal_role_scope"),
    Index("ix_role_assignments_role", "role_id"),
)

# The keys tokens are signed with, one per purpose: "access" (RS256, private key PEM; its public
# half is the JWKS) and "task" (HS256 secret for task authentication tokens). In the store, not
# the data dir, so every replica signs and checks with the same keys.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("purpose", String(16), nullable=False, unique=True),
    Column("secret", Text, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
)

pools = Table(
    "pools",
    metadata,
    Column("seq", SurrogateId, primary_key=True, autoincrement=True),
    Column("account", String(64), ForeignKey("accounts.name"), nullable=False),
    Column("id", String(64), nullable=False),
    Column("key", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("allocation_state", String(16), nullable=False),
    Column("vm_size", String(64), nullable=False),
    Column("slots_per_node", Integer, nullable=False),
    Column("fill_type", String(16), nullable=False),
    Column("target_dedicated", Integer, nullable=False),
    Column("target_low_priority", Integer, nullable=False),
    Column("resize_timeout_s", Float, nullable=False),
    Column("resize_deadline", DateTime(timezone=True)),
    Column("deallocation_option", String(32)),
    Column("resize_errors", JSON),
    Column("spec", JSON, nullable=False),
    Column("etag", String(40), nullable=False),
    Column("last_modified", DateTime(timezone=True), nullable=False),
    Column("creation_time", DateTime(timezone=True), nullable=False),
    Column("state_transition_time", DateTime(timezone=True), nullable=False),
    Column("allocation_state_transition_time", DateTime(timezone=True), nullable=False),
    Column("join_token", String(64), nullable=False),
    # Autoscale: the last run as the API shows it, when the next evaluation is due (on the
    # scaled timeline, see shoal/timebase.py) and when autoscale was last enabled (30 s rule).
    Column("autoscale_run", JSON),
    Column("autoscale_due", DateTime(timezone=True)),
    Column("autoscale_enabled_at", DateTime(timezone=True)),
    UniqueConstraint("account", "key", name="uq_pools_account_key"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("id", String(96), primary_key=True),
    Column("pool_seq", SurrogateId, ForeignKey("pools.seq", ondelete="CASCADE"), nullable=False),
    Column("state", String(24), nullable=False),
    Column("scheduling_state", String(16), nullable=False),
    Column("is_dedicated", Boolean, nullable=False),
    Column("token", String(64), nullable=False, unique=True),
    Column("slots", Integer, nullable=False),
    Column("allocation_time", DateTime(timezone=True), nullable=False),
    Column("state_transition_time", DateTime(timezone=True), nullable=False),
    Column("last_boot_time", DateTime(timezone=True)),
    Column("last_heartbeat", DateTime(timezone=True)),
    Column("agent_pid", Integer),
    Column("incarnation", String(64)),
    Column("file_server_url", String(256)),
    Column("ip_address", String(64)),
    Column("start_task_info", JSON),
    Column("run_start_task", Boolean, nullable=False, default=False),
    Column("total_tasks_run", Integer, nullable=False, default=0),
    # Slots held by the node's running tasks: kept by triggers (migration 0008), never written here.
    Column("used_slots", Integer, nullable=False, server_default="0"),
    Column("total_tasks_succeeded", Integer, nullable=False, default=0),
    Column("leave_option", String(32)),
    # A reboot or reimage waiting for running tasks to end (taskcompletion/retaineddata).
    Column("pending_action", String(16)),
    Column("errors", JSON),
    Column("etag", String(40), nullable=False),
    # The port of the node's SSH server (its agent's hello), for remote login (migration 0015).
    Column("ssh_port", Integer),
    # The certificate references the node installed at its last boot (migration 0020).
    Column("certificate_references", JSON),
)
Index("ix_nodes_pool", nodes.c.pool_seq)
# The nodes with a free slot, in the order that breaks placement ties: a scheduling pass walks
# these alone, however many full nodes the pool has.
Index("ix_nodes_free", nodes.c.pool_seq, nodes.c.allocation_time, nodes.c.id,
      sqlite_where=nodes.c.used_slots < nodes.c.slots, postgresql_where=nodes.c.used_slots < nodes.c.slots)
# The few nodes spot recovery and the node-operations duty look for on every pass (migration 0009).
Index("ix_nodes_preempted", nodes.c.state_transition_time,
      sqlite_where=nodes.c.state == NodeState.PREEMPTED, postgresql_where=nodes.c.state == NodeState.PREEMPTED)
# The few nodes a provider's pass acts on, however many nodes the pools hold (migration 0026).
Index("ix_nodes_provisioning", nodes.c.state,
      sqlite_where=nodes.c.state.in_(PROVISIONING_NODE_STATES),
      postgresql_where=nodes.c.state.in_(PROVISIONING_NODE_STATES))
Index("ix_nodes_pending_action", nodes.c.id,
      sqlite_where=nodes.c.pending_action.is_not(None), postgresql_where=nodes.c.pending_action.is_not(None))

_JOB_ID = String(64).with_variant(String(96), "postgresql")

jobs = Table(
    "jobs",
    metadata,
    Column("seq", SurrogateId, primary_key=True, autoincrement=True),
    Column("account", String(64), ForeignKey("accounts.name"), nullable=False),
    # A schedule's jobs are named `<scheduleId>:job-<n>`: longer than the 64 characters of an id
    # (SQLite does not enforce lengths; migration 0011 widens them on PostgreSQL).
    Column("id", _JOB_ID, nullable=False),
    Column("key", _JOB_ID, nullable=False),
    Column("state", String(16), nullable=False),
    Column("previous_state", String(16)),
    Column("priority", Integer, nullable=False),
    Column("pool_key", String(64), nullable=False),
    Column("max_parallel_tasks", Integer, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("execution_info", JSON, nullable=False),
    Column("disable_option", String(16)),
    Column("etag", String(40), nullable=False),
    Column("last_modified", DateTime(timezone=True), nullable=False),
    Column("creation_time", DateTime(timezone=True), nullable=False),
    Column("state_transition_time", DateTime(timezone=True), nullable=False),
    Column("previous_state_transition_time", DateTime(timezone=True)),
    # The job schedule that created the job (job_schedules.seq), if any.
    Column("schedule_seq", SurrogateId),
    # The job manager task (migration 0013): its seq, and its placement rules as columns so the
    # scheduler reads them with the job, never from JSON: runExclusive, and dedicated-only
    # (allowLowPriorityNode=false). All null for a job without one.
    Column("manager_seq", SurrogateId),
    Column("manager_exclusive", Boolean),
    Column("manager_dedicated_only", Boolean),
    # Its jobPreparationTask's waitForSuccess (migration 0017); null for a job without one.
    Column("prep_wait", Boolean),
    UniqueConstraint("account", "key", name="uq_jobs_account_key"),
)
Index("ix_jobs_pool_state", jobs.c.pool_key, jobs.c.state)
# A schedule's jobs (Job_ListFromJobSchedule, and deleting a schedule deletes them).
Index("ix_jobs_schedule", jobs.c.schedule_seq, jobs.c.seq)

job_schedules = Table(
    "job_schedules",
    metadata,
    Column("seq", SurrogateId, primary_key=True, autoincrement=True),
    Column("account", String(64), ForeignKey("accounts.name"), nullable=False),
    Column("id", String(64), nullable=False),
    Column("key", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("previous_state", String(16)),
    # schedule, jobSpecification, displayName, metadata as the client sent them.
    Column("spec", JSON, nullable=False),
    # nextRunTime, recentJob, endTime as the API shows them.
    Column("execution_info", JSON, nullable=False),
    # How many jobs the schedule has created (the n of its next job's `:job-<n>`).
    Column("job_count", Integer, nullable=False, server_default="0"),
    # The job of the schedule that is not completed yet, if any (at most one at a time).
    Column("active_job_seq", SurrogateId),
    # The pool of `poolLifetimeOption: jobschedule`, once its first job has made it.
    Column("auto_pool_id", String(64)),
    # When the schedule duty must look at it next (on the scaled timeline, shoal/timebase.py):
    # its next run, the end of a start window it waits in, or now when its job completed.
    # NULL when nothing can happen to it without a request (disabled, completed).
    Column("due_at", DateTime(timezone=True)),
    Column("etag", String(40), nullable=False),
    Column("last_modified", DateTime(timezone=True), nullable=False),
    Column("creation_time", DateTime(timezone=True), nullable=False),
    Column("state_transition_time", DateTime(timezone=True), nullable=False),
    Column("previous_state_transition_time", DateTime(timezone=True)),
    UniqueConstraint("account", "key", name="uq_job_schedules_account_key"),
)
# The schedule duty reads only the schedules that are due, in due order: a seek, however many
# schedules there are.
Index("ix_job_schedules_due", job_schedules.c.due_at)
# The active-job-and-schedule quota counts from the index alone.
Index("ix_job_schedules_state", job_schedules.c.account, job_schedules.c.state)

tasks = Table(
    "tasks",
    metadata,
    Column("seq", SurrogateId, primary_key=True, autoincrement=True),
    Column("job_seq", SurrogateId, ForeignKey("jobs.seq", ondelete="CASCADE"), nullable=False),
    Column("id", String(64), nullable=False),
    Column("key", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("previous_state", String(16)),
    Column("required_slots", Integer, nullable=False),
    Column("node_id", String(96)),
    Column("attempt", Integer, nullable=False, default=0),
    Column("kill_option", String(16)),
    Column("spec", JSON, nullable=False),
    Column("execution_info", JSON, nullable=False),
    Column("node_info", JSON),
    Column("etag", String(40), nullable=False),
    Column("last_modified", DateTime(timezone=True), nullable=False),
    Column("creation_time", DateTime(timezone=True), nullable=False),
    Column("state_transition_time", DateTime(timezone=True), nullable=False),
    Column("previous_state_transition_time", DateTime(timezone=True)),
    # executionInfo.result of a completed task, as a column so task counts need no JSON.
    Column("outcome", String(8)),
    # When a completed task's folder on its node is due for deletion (retentionTime).
    Column("retention_deadline", DateTime(timezone=True)),
    # Task dependencies (migration 0010): how many of the task's prerequisites are not yet
    # satisfied (non-zero: blocked, still `active`, never read by the scheduler); the id as an
    # integer, when it is one, for `taskIdRanges`; whether it completed in a way that satisfies
    # the tasks depending on it (its exit options' dependencyAction).
    Column("unsatisfied", Integer, nullable=False, server_default="0"),
    Column("id_number", BigInteger),
    Column("satisfies_dependents", Boolean),
    # numberOfInstances of a multi-instance task, 0 for an ordinary one (migration 0027).
    Column("instances", Integer, nullable=False, server_default="0"),
    UniqueConstraint("job_seq", "key", name="uq_tasks_job_key"),
)
# Serves the scheduler's ready scan (job, state, in insertion order) and, covering outcome and
# slots too, answers task counts from the index alone.
Index("ix_tasks_job_state_seq_counts", tasks.c.job_seq, tasks.c.state, tasks.c.seq, tasks.c.outcome,
      tasks.c.required_slots)
# The scheduler's per-size ready queues: a job's ready (active, unblocked) tasks of one
# requiredSlots value in insertion order, and the distinct sizes a job has waiting, each an index
# seek, so tasks that fit are found without walking past ones that do not, nor past blocked ones.
# Ordinary tasks are instances = 0; each instance count of multi-instance tasks is a queue of its
# own (migration 0027).
Index("ix_tasks_ready", tasks.c.job_seq, tasks.c.state, tasks.c.unsatisfied, tasks.c.instances,
      tasks.c.required_slots, tasks.c.seq)
# Tasks whose ids are integers, for a dependent added after some of its range already completed.
Index("ix_tasks_job_id_number", tasks.c.job_seq, tasks.c.id_number,
      sqlite_where=tasks.c.id_number.is_not(None), postgresql_where=tasks.c.id_number.is_not(None))
# A node's tasks; with state and slots in it, the scheduler's per-node used-slot sums are read
# from the index alone.
Index("ix_tasks_node_state_slots", tasks.c.node_id, tasks.c.state, tasks.c.required_slots)
Index("ix_tasks_retention", tasks.c.retention_deadline)
# A job's tasks in insertion order: the task list pages by walking it (keyset on seq).
Index("ix_tasks_job_seq", tasks.c.job_seq, tasks.c.seq)

# The instances of a multi-instance task's current attempt (migration 0027): 0 is the primary (on
# the task row's node), the others hold one slot each on their nodes while they run (triggers).
subtasks = Table(
    "subtasks",
    metadata,
    Column("task_seq", SurrogateId, ForeignKey("tasks.seq", ondelete="CASCADE"), primary_key=True),
    Column("instance", Integer, primary_key=True),
    Column("attempt", Integer, nullable=False),
    Column("node_id", String(96), nullable=False),
    Column("state", String(16), nullable=False),
    Column("previous_state", String(16)),
    Column("state_transition_time", DateTime(timezone=True), nullable=False),
    Column("previous_state_transition_time", DateTime(timezone=True)),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True)),
    Column("exit_code", Integer),
    Column("failure_info", JSON),
    Column("result", String(8)),
    Column("node_info", JSON, nullable=False),
)
Index("ix_subtasks_node_state", subtasks.c.node_id, subtasks.c.state)

# One row per prerequisite of a dependent task (a range one row per member): `prerequisite_key`
# for a taskIds entry (the lower-cased id), `prerequisite_number` for a taskIdRanges member. Only
# open (unsatisfied) edges are in the two lookup indexes, so completing a task seeks exactly the
# edges it satisfies; `satisfied` makes a second completion of the same prerequisite ("4" then
# "04" in a range, or a reactivated task) count once.
task_dependencies = Table(
    "task_dependencies",
    metadata,
    Column("seq", SurrogateId, primary_key=True, autoincrement=True),
    Column("job_seq", SurrogateId, ForeignKey("jobs.seq", ondelete="CASCADE"), nullable=False),
    Column("task_seq", SurrogateId, ForeignKey("tasks.seq", ondelete="CASCADE"), nullable=False),
    Column("prerequisite_key", String(64)),
    Column("prerequisite_number", BigInteger),
    Column("satisfied", Boolean, nullable=False, server_default=false()),
)
Index("ix_task_dependencies_task", task_dependencies.c.task_seq)
Index("ix_task_dependencies_open_key", task_dependencies.c.job_seq, task_dependencies.c.prerequisite_key,
      sqlite_where=task_dependencies.c.satisfied == false(), postgresql_where=task_dependencies.c.satisfied == false())
Index("ix_task_dependencies_open_number", task_dependencies.c.job_seq, task_dependencies.c.prerequisite_number,
      sqlite_where=task_dependencies.c.satisfied == false(), postgresql_where=task_dependencies.c.satisfied == false())

# What a job's preparation and release tasks did on each node that got a task of the job
# (migration 0017, service/job_prep.py): their execution info as the API shows it, their states
# as columns for $filter, and what the node must run next (`pending`: "prep" | "release", the
# run named by `generation`). `barred`: the preparation failed with waitForSuccess, so the node
# takes no more tasks of the job. Each lookup is a partial index of the few rows it wants.
job_node_tasks = Table(
    "job_node_tasks",
    metadata,
    Column("seq", SurrogateId, primary_key=True, autoincrement=True),
    Column("job_seq", SurrogateId, ForeignKey("jobs.seq", ondelete="CASCADE"), nullable=False),
    Column("node_id", String(96), nullable=False),
    Column("pool_id", String(64), nullable=False),
    Column("generation", Integer, nullable=False, server_default="0"),
    Column("pending", String(8)),
    Column("prep_state", String(16)),
    Column("prep_result", String(8)),
    Column("prep_info", JSON),
    Column("release_state", String(16)),
    Column("release_info", JSON),
    Column("barred", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("job_seq", "node_id", name="uq_job_node_tasks_job_node"),
)
Index("ix_job_node_tasks_node", job_node_tasks.c.node_id)
# The status list pages a job's listed rows (its preparation started there) in the order they
# came (keyset on seq). Partial, like the others: a full (job, seq) index is what SQLite's planner
# would take for every lookup by job, even where a partial one holds the few rows wanted.
Index("ix_job_node_tasks_listed", job_node_tasks.c.job_seq, job_node_tasks.c.seq,
      sqlite_where=job_node_tasks.c.prep_state.is_not(None), postgresql_where=job_node_tasks.c.prep_state.is_not(None))
Index("ix_job_node_tasks_pending", job_node_tasks.c.node_id,
      sqlite_where=job_node_tasks.c.pending.is_not(None), postgresql_where=job_node_tasks.c.pending.is_not(None))
Index("ix_job_node_tasks_releases", job_node_tasks.c.job_seq,
      sqlite_where=job_node_tasks.c.pending == "release", postgresql_where=job_node_tasks.c.pending == "release")
Index("ix_job_node_tasks_barred", job_node_tasks.c.job_seq, job_node_tasks.c.node_id,
      sqlite_where=job_node_tasks.c.barred == true(), postgresql_where=job_node_tasks.c.barred)

# Counters kept by database triggers (migration 0007) in the transaction of every insert, delete
# and state change of a task or node, whichever code path makes it, so task counts, node counts,
# job completion and metric sampling read one row instead of counting. A migration that rebuilds
# `tasks`, `nodes` or `jobs` (SQLite batch mode copies the table) drops their triggers and must
# create them again: tests/store/test_counters.py would catch it.
_COUNT_BUCKETS = ("active", "running", "completed", "succeeded", "failed")
job_task_counts = Table(
    "job_task_counts",
    metadata,
    Column("job_seq", SurrogateId, ForeignKey("jobs.seq", ondelete="CASCADE"), primary_key=True,
           autoincrement=False),
    *(Column(name, BigInteger, nullable=False, server_default="0") for name in _COUNT_BUCKETS),
    *(Column(f"{name}_slots", BigInteger, nullable=False, server_default="0") for name in _COUNT_BUCKETS),
    # Active tasks blocked by their dependencies (migration 0010): counted in `active` as well.
    Column("blocked", BigInteger, nullable=False, server_default="0"),
    # Σ (numberOfInstances - 1) of the ready multi-instance tasks (migration 0027), for $ActiveTasks.
    Column("extra_instances", BigInteger, nullable=False, server_default="0"),
)

# Login users of a node (ComputeNode_AddUser), migration 0015: a handful per node, gone with it.
# The password is kept only as a salted scrypt hash (`service/node_users.py`), which the node's
# SSH server checks; the public key as given.
node_users = Table(
    "node_users",
    metadata,
    Column("node_id", String(96), ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("is_admin", Boolean, nullable=False),
    Column("expiry_time", DateTime(timezone=True), nullable=False),
    Column("password_hash", String(256)),
    Column("ssh_public_key", Text),
    PrimaryKeyConstraint("node_id", "name", name="pk_node_users"),
)

# Each attempt of a task that ended on a node (completed, retried, requeued), migrations 0016 and
# 0030: the node's `recentTasks` and the history of a task across requeues. A deleted task's
# attempts stay (task_seq NULL) with what they showed then, as Azure's node keeps listing a task
# of a job deleted since (recorded: test_batch_extensions_live.json #100); they go with their node,
# and beyond its newest RECENT_TASKS when another attempt ends there.
task_attempts = Table(
    "task_attempts",
    metadata,
    Column("seq", SurrogateId, primary_key=True, autoincrement=True),
    Column("node_id", String(96), nullable=False),
    Column("task_seq", SurrogateId, ForeignKey("tasks.seq", ondelete="SET NULL")),
    Column("end_time", DateTime(timezone=True), nullable=False),
    Column("end_state", String(16), nullable=False),
    Column("job_id", _JOB_ID, nullable=False),
    Column("task_id", String(64), nullable=False),
    Column("execution_info", JSON, nullable=False),
)
Index("ix_task_attempts_node", task_attempts.c.node_id, task_attempts.c.end_time, task_attempts.c.seq)
Index("ix_task_attempts_task", task_attempts.c.task_seq)

# The control plane's copy of each task's stdout.txt and stderr.txt (migration 0021): their last
# bytes (at most agent/outputs.KEPT_BYTES each) and full sizes, as the attempt that ended last
# left them; read when the task's node cannot answer (gone, preempted, unusable, deallocated).
task_outputs = Table(
    "task_outputs",
    metadata,
    Column("task_seq", SurrogateId, ForeignKey("tasks.seq", ondelete="CASCADE"), primary_key=True,
           autoincrement=False),
    Column("attempt", Integer, nullable=False),
    Column("node_id", String(96), nullable=False),
    Column("ended", DateTime(timezone=True), nullable=False),
    Column("stdout", LargeBinary, nullable=False),
    Column("stdout_size", BigInteger, nullable=False),
    Column("stderr", LargeBinary, nullable=False),
    Column("stderr_size", BigInteger, nullable=False),
)

# The control plane's copies of a node's own logs (migration 0025): the last bytes of the agent's
# log and of the start task's stdout/stderr (at most agent/outputs.KEPT_BYTES each), so they can be
# read once the node is gone or cannot answer. Keyed by pool and node id, not the node row: they
# outlive it. `removed` is set when the node's record goes; rows go a retention after that.
node_logs = Table(
    "node_logs",
    metadata,
    Column("account", String(64), primary_key=True),
    Column("pool_id", String(64), primary_key=True),
    Column("node_id", String(96), primary_key=True),
    Column("name", String(32), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
    Column("removed", DateTime(timezone=True)),
)
Index("ix_node_logs_node", node_logs.c.node_id)
Index("ix_node_logs_removed", node_logs.c.removed, sqlite_where=node_logs.c.removed.is_not(None),
      postgresql_where=node_logs.c.removed.is_not(None))

# The account's lifetime statistics (migration 0025): counters added to as tasks complete and
# nodes hold or give back their VMs (service/lifetime.py), so the answer is one row, whatever the
# number of tasks. Open spans' core time is `open_dedicated_cores` × now − `open_core_epochs` (the
# sum of cores × start, in epoch seconds).
lifetime_stats = Table(
    "lifetime_stats",
    metadata,
    Column("account", String(64), primary_key=True),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("last_update_time", DateTime(timezone=True), nullable=False),
    Column("succeeded", BigInteger, nullable=False, default=0),
    Column("failed", BigInteger, nullable=False, default=0),
    Column("retries", BigInteger, nullable=False, default=0),
    Column("wall_clock_seconds", Float, nullable=False, default=0.0),
    Column("wait_seconds", Float, nullable=False, default=0.0),
    Column("closed_core_seconds", Float, nullable=False, default=0.0),
    Column("open_dedicated_cores", Float, nullable=False, default=0.0),
    Column("open_core_epochs", Float, nullable=False, default=0.0),
)

# What each job's attempts used (migration 0022), per pool, VM size and node kind: counters added
# to as attempts end (service/ledger.py). A ledger: rows outlive their job, nothing cascades.
job_usage = Table(
    "job_usage",
    metadata,
    Column("account", String(64), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("pool_id", String(64), nullable=False),
    Column("vm_size", String(64), nullable=False),
    Column("is_dedicated", Boolean, nullable=False),
    Column("attempts", BigInteger, nullable=False),
    Column("slot_seconds", Float, nullable=False),
    Column("core_seconds", Float, nullable=False),
    PrimaryKeyConstraint("account", "job_id", "pool_id", "vm_size", "is_dedicated", name="pk_job_usage"),
)

# When each node held its VM (migration 0018): a span opens when the node is allocated (or
# comes back from preemption or deallocation) and closes when it leaves, is preempted or is
# deallocated. Pool usage metrics and the usage ledger sum the spans' overlap with a window.
node_usage = Table(
    "node_usage",
    metadata,
    Column("seq", SurrogateId, primary_key=True, autoincrement=True),
    Column("account", String(64), nullable=False),
    Column("pool_id", String(64), nullable=False),
    Column("vm_size", String(64), nullable=False),
    Column("node_id", String(96), nullable=False),
    Column("is_dedicated", Boolean, nullable=False),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True)),
)
# Open spans (few: the nodes there are now), and closed ones by end, so a window's spans are two
# index walks: the open ones and those that ended after the window began.
Index("ix_node_usage_open", node_usage.c.node_id, sqlite_where=node_usage.c.end_time.is_(None),
      postgresql_where=node_usage.c.end_time.is_(None))
Index("ix_node_usage_end", node_usage.c.end_time)

# The account's certificates (Certificate_Add, api-versions up to 2024-02-01.19.0), migration 0020.
# `public_data` is the certificate (DER, base64) every answer shows; `private_data` and `password`
# are a pfx's, sent only to nodes that install it (`service/certificates.py`) and never shown.
certificates = Table(
    "certificates",
    metadata,
    Column("seq", SurrogateId, primary_key=True, autoincrement=True),
    Column("account", String(64), ForeignKey("accounts.name"), nullable=False),
    Column("thumbprint_algorithm", String(16), nullable=False),
    Column("thumbprint", String(40), nullable=False),
    Column("format", String(8), nullable=False),
    Column("public_data", Text, nullable=False),
    Column("private_data", Text),
    Column("password", Text),
    Column("state", String(16), nullable=False),
    Column("state_transition_time", DateTime(timezone=True), nullable=False),
    Column("previous_state", String(16)),
    Column("previous_state_transition_time", DateTime(timezone=True)),
    Column("delete_error", JSON),
    UniqueConstraint("account", "thumbprint_algorithm", "thumbprint", name="uq_certificates_thumbprint"),
)

# The account's applications and their packages (managed through /shoal/v1/applications, as
# Azure manages them through its management plane). `key`/`version_key` are lower-cased: ids
# and versions are case-preserving and unique case-insensitively, as on Azure.
applications = Table(
    "applications",
    metadata,
    Column("seq", SurrogateId, primary_key=True, autoincrement=True),
    Column("account", String(64), ForeignKey("accounts.name"), nullable=False),
    Column("id", String(64), nullable=False),
    Column("key", String(64), nullable=False),
    Column("display_name", String(1024)),
    Column("allow_updates", Boolean, nullable=False, server_default=true()),
    Column("default_version", String(64)),
    Column("etag", String(64), nullable=False),
    Column("last_modified", DateTime(timezone=True), nullable=False),
    UniqueConstraint("account", "key", name="uq_applications_key"),
)

# A package is `pending` until its zip is in the linked storage account, then `active`; only
# active packages are listed on the data plane and can be deployed.
application_packages = Table(
    "application_packages",
    metadata,
    Column("seq", SurrogateId, primary_key=True, autoincrement=True),
    Column("application_seq", BigInteger, ForeignKey("applications.seq", ondelete="CASCADE"), nullable=False),
    Column("version", String(64), nullable=False),
    Column("version_key", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("format", String(8), nullable=False),
    Column("blob_container", String(63), nullable=False),
    Column("blob_name", String(1024), nullable=False),
    Column("size_bytes", BigInteger),
    Column("last_activation_time", DateTime(timezone=True)),
    Column("creation_time", DateTime(timezone=True), nullable=False),
    UniqueConstraint("application_seq", "version_key", name="uq_application_packages_version"),
)

# Nodes per (pool, dedicated or spot, state); states as stored (lower case).
pool_node_counts = Table(
    "pool_node_counts",
    metadata,
    Column("pool_seq", SurrogateId, ForeignKey("pools.seq", ondelete="CASCADE"), nullable=False),
    Column("is_dedicated", Boolean, nullable=False),
    Column("state", String(24), nullable=False),
    Column("count", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("pool_seq", "is_dedicated", "state", name="pk_pool_node_counts"),
)

# Autoscale metric samples: bounded (old rows are trimmed every sample tick) and time-indexed.
# Pool-level metrics have node_id NULL; per-node resource metrics carry the node.
metric_samples = Table(
    "metric_samples",
    metadata,
    Column("seq", SurrogateId, primary_key=True, autoincrement=True),
    Column("pool_seq", SurrogateId, ForeignKey("pools.seq", ondelete="CASCADE"), nullable=False),
    Column("metric", String(32), nullable=False),
    Column("node_id", String(96)),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("value", Float, nullable=False),
)
Index("ix_metric_samples_pool_time", metric_samples.c.pool_seq, metric_samples.c.time)

__all__ = ["metadata", "accounts", "pools", "nodes", "jobs", "job_schedules", "tasks", "metric_samples",
           "job_task_counts", "pool_node_counts", "task_dependencies", "node_users", "task_attempts",
           "job_node_tasks", "node_usage", "task_outputs", "job_usage", "certificates", "Text"]
