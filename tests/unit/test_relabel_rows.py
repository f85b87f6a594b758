"""Checking relabel input rows: the original completion split off, ids, and why a row is
invalid."""

from __future__ import annotations

from langgraph_moa.batch.rows import InvalidRow, Row, check_row


def test_last_assistant_message_is_the_original_completion() -> None:
    row = check_row(
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
            ],
            "metadata": {"source": "prod"},
        },
        "f:1",
    )
    assert isinstance(row, Row)
    assert row.prompt == [{"role": "user", "content": "Hi"}]
    assert row.completion == {"role": "assistant", "content": "Hello!"}
    assert len(row.id) == 16  # a content hash, stable
    again = check_row({"messages": row.data["messages"], "metadata": {"source": "prod"}}, "f:9")
    assert isinstance(again, Row) and again.id == row.id


def test_completion_field_and_tool_calls() -> None:
    row = check_row(
        {
            "id": 7,
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "w", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            "completion": "It is sunny.",
        },
        "f:2",
    )
    assert isinstance(row, Row) and row.id == "7"
    assert row.completion == {"role": "assistant", "content": "It is sunny."}
    assert [m.type for m in row.messages()] == ["human", "ai", "tool"]


def test_invalid_rows_say_why() -> None:
    cases = {
        "a row must be a JSON object": [1],
        "messages": {"messages": []},
        "must end with a user message": {"messages": [{"role": "system", "content": "x"}]},
        "tool_call_id": {"messages": [{"role": "tool", "content": "r"}]},
        "completion: must be an assistant": {
            "messages": [{"role": "user", "content": "q"}],
            "completion": {"role": "user", "content": "x"},
        },
    }
    for expected, data in cases.items():
        found = check_row(data, "f:3")
        assert isinstance(found, InvalidRow) and expected in found.reason, (expected, found)
        assert found.where == "f:3"
