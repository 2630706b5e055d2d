"""Conformance table for the OData $filter/$select subset of Azure Batch list operations."""

from __future__ import annotations

import pytest

from shoal.odata import ODataError, apply_select, compile_filter, parse_select

POOL = {
    "id": "pool-a",
    "displayName": "It's a pool",
    "state": "active",
    "allocationState": "steady",
    "vmSize": "standard_d2s_v3",
    "currentDedicatedNodes": 3,
    "targetDedicatedNodes": 3,
    "enableAutoScale": False,
    "creationTime": "2024-03-01T10:00:00.123Z",
    "lastModified": "2024-03-02T00:00:00Z",
    "taskSlotsPerNode": 1,
}

TASK = {
    "id": "task-7",
    "state": "completed",
    "executionInfo": {"exitCode": 2, "result": "failure", "retryCount": 0, "endTime": "2024-05-05T05:05:05Z"},
    "nodeInfo": None,
}

# (filter, resource, expected)
CASES = [
    ("state eq 'active'", POOL, True),
    ("state eq 'Active'", POOL, True),  # enum values compare case-insensitively
    ("allocationState eq 'STEADY'", POOL, True),
    ("state ne 'active'", POOL, False),
    ("id eq 'pool-a'", POOL, True),
    ("id eq 'POOL-A'", POOL, False),  # other strings are case-sensitive
    ("vmSize eq 'standard_d2s_v3'", POOL, True),
    ("displayName eq 'It''s a pool'", POOL, True),
    ("currentDedicatedNodes eq 3", POOL, True),
    ("currentDedicatedNodes gt 2", POOL, True),
    ("currentDedicatedNodes ge 3", POOL, True),
    ("currentDedicatedNodes lt 3", POOL, False),
    ("currentDedicatedNodes le 3.0", POOL, True),
    ("currentDedicatedNodes gt -1", POOL, True),
    ("enableAutoScale eq false", POOL, True),
    ("enableAutoScale eq true", POOL, False),
    ("enableAutoScale", POOL, False),
    ("not enableAutoScale", POOL, True),
    ("creationTime gt datetime'2024-03-01T00:00:00Z'", POOL, True),
    ("creationTime lt datetime'2024-03-01T00:00:00Z'", POOL, False),
    ("creationTime ge 2024-03-01T10:00:00.123Z", POOL, True),
    ("creationTime gt 2024-03-01T10:00:00.123Z", POOL, False),
    ("lastModified eq datetime'2024-03-02T00:00:00Z'", POOL, True),
    ("lastModified eq 2024-03-02T01:00:00+01:00", POOL, True),
    ("lastModified lt 2024-03-01T23:00:00", POOL, False),  # naive means UTC
    ("startswith(id,'pool-')", POOL, True),
    ("startswith(id, 'task')", POOL, False),
    ("startswith(missing,'x')", POOL, False),
    ("not startswith(id,'pool')", POOL, False),
    ("state eq 'active' and currentDedicatedNodes eq 3", POOL, True),
    ("state eq 'active' and currentDedicatedNodes eq 4", POOL, False),
    ("state eq 'deleting' or currentDedicatedNodes eq 3", POOL, True),
    ("state eq 'deleting' or id eq 'x' or id eq 'pool-a'", POOL, True),
    ("not state eq 'active'", POOL, False),
    ("not (state eq 'deleting')", POOL, True),
    ("(state eq 'deleting' or state eq 'active') and startswith(id,'pool')", POOL, True),
    ("state eq 'deleting' or state eq 'active' and id eq 'nope'", POOL, False),  # and binds tighter
    ("((id eq 'pool-a'))", POOL, True),
    ("id eq 'pool-a' AND state EQ 'active'", POOL, True),  # keywords are case-insensitive
    ("executionInfo/exitCode eq 2", TASK, True),
    ("executionInfo/exitCode ne 0", TASK, True),
    ("executionInfo/result eq 'Failure'", TASK, True),
    ("executionInfo/endTime lt datetime'2024-06-01T00:00:00Z'", TASK, True),
    ("executionInfo/missing eq null", TASK, True),
    ("nodeInfo/affinityId eq 'x'", TASK, False),
    ("nodeInfo eq null", TASK, True),
    ("nodeInfo ne null", TASK, False),
    ("missing gt 1", TASK, False),
    ("missing ne 'x'", TASK, True),
    ("id eq 7", TASK, False),  # mismatched types are unequal, not an error
    ("id ne 7", TASK, True),
    ("executionInfo/exitCode eq '2'", TASK, False),
    ("executionInfo/exitCode gt '1'", TASK, False),
    ("'completed' eq state", TASK, True),
    ("state eq 'active'", TASK, False),
    ("", POOL, True),
    ("   ", POOL, True),
]


@pytest.mark.parametrize(("text", "resource", "expected"), CASES)
def test_filter_conformance(text, resource, expected):
    assert compile_filter(text)(resource) is expected


def test_absent_filter_matches_everything():
    assert compile_filter(None)({}) is True


# (filter, position of the problem)
MALFORMED = [
    ("state eq", 8),
    ("eq 'active'", 0),
    ("state eq 'active", 9),
    ("state = 'active'", 6),
    ("state eq 'active' and", 21),
    ("state eq 'active' or or id eq 'x'", 21),
    ("(state eq 'active'", 18),
    ("state eq 'active')", 17),
    ("state eq 'active' id eq 'x'", 18),
    ("substringof('a', id)", 0),
    ("startswith('x', id)", 11),
    ("startswith(id, 3)", 15),
    ("startswith(id 'x')", 14),
    ("created gt datetime'yesterday'", 11),
    ("'active'", 8),
    ("3", 1),
    ("state eq 'a' not", 13),
    ("state eq @x", 9),
]


@pytest.mark.parametrize(("text", "position"), MALFORMED)
def test_malformed_filter_raises_with_position(text, position):
    with pytest.raises(ODataError) as caught:
        compile_filter(text)
    assert caught.value.position == position
    assert str(position) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        ("id", ["id"]),
        ("id,state", ["id", "state"]),
        (" id , executionInfo ", ["id", "executionInfo"]),
    ],
)
def test_parse_select(text, expected):
    assert parse_select(text) == expected


@pytest.mark.parametrize("text", ["id,,state", "id,", "executionInfo/exitCode", "id state", "*"])
def test_malformed_select(text):
    with pytest.raises(ODataError):
        parse_select(text)


def test_apply_select_keeps_selected_top_level_and_metadata():
    resource = {"odata.metadata": "https://x/$metadata#pools/@Element", **POOL}
    assert apply_select(resource, ["id", "state", "nosuchthing"]) == {
        "odata.metadata": "https://x/$metadata#pools/@Element",
        "id": "pool-a",
        "state": "active",
    }
    assert apply_select(resource, None) is resource
    assert apply_select(TASK, ["ExecutionInfo"]) == {"executionInfo": TASK["executionInfo"]}


def test_nesting_is_bounded_before_recursion_is():
    from shoal.odata import MAX_NESTING

    inner = "state eq 'active'"
    assert compile_filter("(" * MAX_NESTING + inner + ")" * MAX_NESTING)(POOL)
    assert compile_filter("not " * MAX_NESTING + inner)(POOL) is True  # an even number of nots
    for text in ("(" * (MAX_NESTING + 1) + inner + ")" * (MAX_NESTING + 1), "(" * 100_000,
                 "not " * (MAX_NESTING + 1) + inner, "not (" * 500 + inner + ")" * 500):
        with pytest.raises(ODataError, match="nests"):
            compile_filter(text)


def test_a_number_too_long_to_convert_is_an_odata_error():
    with pytest.raises(ODataError, match="too long"):
        compile_filter("currentDedicatedNodes eq " + "9" * 5000)


@pytest.mark.parametrize("op", ["gt", "ge", "lt", "le"])
def test_ordering_values_without_an_order_is_false_not_an_error(op):
    resource = {"a": {"x": 1}, "b": {"x": 2}, "c": [1, "x"], "d": [2, None]}
    assert compile_filter(f"a {op} b")(resource) is False
    assert compile_filter(f"c {op} d")(resource) is False
    assert compile_filter("a ne b")(resource) is True


def test_comparing_stored_values_nested_past_the_recursion_limit_is_false():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    other: list = []
    for _ in range(5000):
        other = [other]
    assert compile_filter("a eq b")({"a": deep, "b": other}) is False
