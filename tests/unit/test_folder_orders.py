"""The outbox of folder deletions (shoal.service.folder_orders), from plain data and a hand-wound clock."""

from __future__ import annotations

from shoal.service.folder_orders import (
    JOB_FOLDER_WAIT_S,
    MAX_ORDERS_PER_ANSWER,
    MAX_PENDING_PER_NODE,
    RESEND_AFTER_S,
    FolderOrders,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_order_is_sent_once_then_again_only_when_unacknowledged_for_the_resend_interval() -> None:
    clock = Clock()
    orders = FolderOrders(clock)
    assert orders.order_task_folder("n1", "job", "task", 7)
    assert orders.has_due("n1") and not orders.has_due("n2")
    assert orders.take_due("n1") == ([["job", "task"]], [])
    assert orders.take_due("n1") == ([], []) and not orders.has_due("n1")
    clock.now += RESEND_AFTER_S - 1
    assert not orders.has_due("n1")
    clock.now += 1
    assert orders.take_due("n1") == ([["job", "task"]], [])
    # Recorded only once acknowledged, and ordered until the duty has taken the record.
    assert orders.take_removed_task_seqs() == []
    orders.acknowledge("n1", [["job", "task"]], [])
    assert orders.is_task_ordered(7)
    assert orders.take_removed_task_seqs() == [7]
    assert not orders.is_task_ordered(7) and not orders.has_due("n1")


def test_a_node_acknowledges_only_its_own_orders() -> None:
    orders = FolderOrders(Clock())
    orders.order_task_folder("n1", "job", "task", 1)
    orders.order_job_folder(10, "job", ["n1", "n2"])
    orders.acknowledge("n2", [["job", "task"]], ["other"])
    assert orders.take_removed_task_seqs() == []
    assert orders.take_settled_jobs() == []
    orders.acknowledge("n2", [], ["job"])
    assert orders.take_settled_jobs() == []  # n1 has not
    orders.acknowledge("n1", [], ["job"])
    assert orders.take_settled_jobs() == [10]
    assert orders.nodes_with_orders() == ["n1"]  # its task order stands


def test_a_gone_node_completes_its_orders_and_a_silent_one_stops_holding_a_job_after_the_wait() -> None:
    clock = Clock()
    orders = FolderOrders(clock)
    orders.order_task_folder("gone", "job", "a", 1)
    orders.order_job_folder(10, "job", ["gone", "silent"])
    orders.forget_node("gone")
    assert orders.take_removed_task_seqs() == [1]
    assert orders.take_settled_jobs() == []
    clock.now += JOB_FOLDER_WAIT_S
    assert orders.take_settled_jobs() == [10]
    assert orders.nodes_with_orders() == []


def test_backlogs_and_answers_are_bounded() -> None:
    orders = FolderOrders(Clock())
    for i in range(MAX_PENDING_PER_NODE):
        assert orders.order_task_folder("n1", "job", f"t{i}", i)
    assert not orders.order_task_folder("n1", "job", "one-too-many", 10**6)
    assert not orders.is_task_ordered(10**6)
    first, _ = orders.take_due("n1")
    assert len(first) == MAX_ORDERS_PER_ANSWER
    second, _ = orders.take_due("n1")
    assert len(second) == MAX_ORDERS_PER_ANSWER and not {tuple(x) for x in first} & {tuple(x) for x in second}


def test_a_deleted_task_orders_its_folder_without_a_record_to_update() -> None:
    orders = FolderOrders(Clock())
    orders.order_task_folder("n1", "job", "task", None)
    assert orders.take_due("n1") == ([["job", "task"]], [])
    orders.acknowledge("n1", [["job", "task"]], [])
    assert orders.take_removed_task_seqs() == [] and orders.nodes_with_orders() == []
