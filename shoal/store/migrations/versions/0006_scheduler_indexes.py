"""scheduler indexes: per-size ready queues, per-node used slots

Revision ID: 0006
Revises: 0005
"""
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index('ix_tasks_job_state_slots_seq', ['job_seq', 'state', 'required_slots', 'seq'],
                              unique=False)
        # Replaces ix_tasks_node (node_id), which it serves as a prefix.
        batch_op.create_index('ix_tasks_node_state_slots', ['node_id', 'state', 'required_slots'], unique=False)
        batch_op.drop_index('ix_tasks_node')


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index('ix_tasks_node', ['node_id'], unique=False)
        batch_op.drop_index('ix_tasks_node_state_slots')
        batch_op.drop_index('ix_tasks_job_state_slots_seq')
