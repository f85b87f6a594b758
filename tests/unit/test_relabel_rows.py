"""Checking relabel input rows: the original completion split off, ids, and why a row is
invalid; reading poison input (numbers Python will not convert, lone surrogates, a BOM, lines
too long, non-regular files, damaged Parquet) one row at a time."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.batch.row_check import InvalidRow, Row, check_row
from langgraph_moa.batch.rows import (
    MAX_LINE,
    count_rows,
    input_files,
    parse_line,
    read_rows,
    rows_of,
)
from langgraph_moa.errors import MoAInputError


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


# --- poison input: one bad row is an InvalidRow with file:line and a reason, reading goes on ---

GOOD = b'{"id": "ok", "messages": [{"role": "user", "content": "hi"}]}\n'


def read(path: Path) -> list[Row | InvalidRow]:
    return list(read_rows(path))


def test_numbers_python_will_not_convert_are_invalid_rows() -> None:
    cases = {
        b'{"id": 1%s, "messages": []}' % (b"0" * 5000): "more than 4300 digits",
        b'{"messages": [{"role": "user", "content": "q"}], "metadata": {"x": 1e999}}': (
            "1e999 is out of range"
        ),
        b'{"messages": [{"role": "user", "content": "q"}], "metadata": {"x": -1e400}}': (
            "out of range"
        ),
        b'{"messages": [{"role": "user", "content": "q"}], "metadata": {"x": NaN}}': (
            "NaN is not a JSON number"
        ),
        b'{"messages": [{"role": "user", "content": "q"}], "metadata": {"x": -Infinity}}': (
            "-Infinity is not a JSON number"
        ),
    }
    for line, expected in cases.items():
        found = parse_line(line, "f.jsonl:4")
        assert isinstance(found, InvalidRow), line[:60]
        assert found.where == "f.jsonl:4" and expected in found.reason, found.reason
        assert found.reason.startswith("not JSON") and "\n" not in found.reason
    # a large integer within Python's limit, and ordinary floats, are fine
    fine = parse_line(
        b'{"messages": [{"role": "user", "content": "q"}], "metadata": {"n": %s, "f": 1.5e300}}'
        % (b"9" * 4000),
        "f.jsonl:5",
    )
    assert isinstance(fine, Row) and fine.data["metadata"]["f"] == 1.5e300


def test_a_lone_surrogate_anywhere_is_an_invalid_row() -> None:
    for line in (
        rb'{"messages": [{"role": "user", "content": "bad \ud800 text"}]}',
        rb'{"messages": [{"role": "user", "content": "q"}], "metadata": {"\udfff": 1}}',
        rb'{"id": "x\ud83d", "messages": [{"role": "user", "content": "q"}]}',
    ):
        found = parse_line(line, "f.jsonl:2")
        assert isinstance(found, InvalidRow), line
        assert "lone surrogate" in found.reason and "\\ud" in found.reason, found.reason
        found.reason.encode("utf-8")  # the reason itself can be stored
    # a proper surrogate pair (an emoji written as escapes) is text
    pair = parse_line(rb'{"messages": [{"role": "user", "content": "\ud83d\ude00"}]}', "f:3")
    assert isinstance(pair, Row) and pair.prompt[0]["content"] == "\U0001f600"
    # rows fed from Python get the same check
    (fed,) = rows_of([{"messages": [{"role": "user", "content": "\udc80"}]}])
    assert isinstance(fed, InvalidRow) and "lone surrogate" in fed.reason


def test_anything_unexpected_while_checking_one_row_is_that_row_invalid() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    found = check_row({"messages": [{"role": "user", "content": "q"}], "metadata": deep}, "f:9")
    assert isinstance(found, InvalidRow) and found.where == "f:9"
    assert found.reason.startswith("cannot check the row: RecursionError"), found.reason
    nested = b'{"messages": [{"role": "user", "content": "q"}], "m": ' + b"[" * 100_000
    too_deep = parse_line(nested + b"]" * 100_000 + b"}", "f:10")
    assert isinstance(too_deep, InvalidRow) and "nested too deeply" in too_deep.reason


def test_a_bom_before_the_first_line_is_read_past(tmp_path: Path) -> None:
    data = tmp_path / "bom.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + GOOD + GOOD.replace(b'"ok"', b'"ok2"'))
    found = read(data)
    assert [type(r) for r in found] == [Row, Row]
    assert [r.where for r in found] == ["bom.jsonl:1", "bom.jsonl:2"]
    assert count_rows(data) == 2
    # a BOM elsewhere is not UTF-8 JSON: that line alone is invalid
    later = tmp_path / "later.jsonl"
    later.write_bytes(GOOD + b"\xef\xbb\xbf" + GOOD.replace(b'"ok"', b'"ok2"'))
    assert [type(r) for r in read(later)] == [Row, InvalidRow]


def test_a_line_too_long_is_skipped_to_its_newline(tmp_path: Path) -> None:
    data = tmp_path / "long.jsonl"
    with data.open("wb") as f:
        f.write(GOOD)
        f.write(b'{"messages": "' + b"x" * (MAX_LINE + 10) + b'"}\n')
        f.write(GOOD.replace(b'"ok"', b'"after"'))
        f.write(b"y" * (MAX_LINE + 1))  # a last line, too long, with no newline
    found = read(data)
    assert [r.where for r in found] == [
        "long.jsonl:1",
        "long.jsonl:2",
        "long.jsonl:3",
        "long.jsonl:4",
    ]
    assert isinstance(found[0], Row) and isinstance(found[2], Row) and found[2].id == "after"
    for bad in (found[1], found[3]):
        assert isinstance(bad, InvalidRow) and bad.reason == "the line is longer than 64 MiB"
    # a line of exactly the limit (its newline aside) is read
    exact = tmp_path / "exact.jsonl"
    body = b'{"messages": [{"role": "user", "content": "q"}], "pad": "'
    exact.write_bytes(body + b"p" * (MAX_LINE - len(body) - 2) + b'"}\n')
    (row,) = read(exact)
    assert isinstance(row, Row)


def test_folder_suffixes_in_any_case_and_non_regular_files_refused(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(GOOD)
    (folder / "C.JSONL").write_bytes(GOOD.replace(b'"ok"', b'"c"'))
    (folder / "notes.txt").write_text("not an input")
    (folder / "sub.jsonl").mkdir()  # a folder is not an input file
    assert [p.name for p in input_files(folder)] == ["C.JSONL", "a.jsonl"]
    assert sorted(r.id for r in read(folder) if isinstance(r, Row)) == ["c", "ok"]
    assert count_rows(folder) == 2

    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    with pytest.raises(MoAInputError) as err:
        input_files(zero)
    message = str(err.value)
    assert "zero.jsonl" in message and "/dev/zero" in message and "character device" in message
    assert "\n" not in message
    with pytest.raises(MoAInputError, match="character device"):
        count_rows(zero)

    fifo = folder / "pipe.ndjson"
    os.mkfifo(fifo)
    with pytest.raises(MoAInputError, match=r"pipe\.ndjson' is a FIFO, not a regular file"):
        input_files(folder)


def test_parquet_truncated_or_damaged_is_named(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = [
        {"id": f"r{k}", "messages": json.dumps([{"role": "user", "content": f"q{k} " + "x" * 200}])}
        for k in range(1000)
    ]
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.Table.from_pylist(items), whole, row_group_size=300, compression="snappy")
    data = whole.read_bytes()

    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) // 2])
    for reader in (input_files, count_rows, lambda p: list(read_rows(p))):
        with pytest.raises(MoAInputError) as err:
            reader(cut)
        assert f"cannot read {str(cut)!r} as Parquet" in str(err.value)
        assert "\n" not in str(err.value)

    # damaged inside (the footer is fine): the rows before the damage are kept
    column = pq.ParquetFile(whole).metadata.row_group(2).column(1)
    start = column.data_page_offset + column.total_compressed_size // 2
    damaged = bytearray(data)
    damaged[start : start + 200] = b"\xab" * 200
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(damaged))
    found = read(bad)
    *rows, last = found
    assert rows and all(isinstance(r, Row) for r in rows)
    assert [r.id for r in rows if isinstance(r, Row)] == [f"r{k}" for k in range(len(rows))]
    assert isinstance(last, InvalidRow) and last.where == f"bad.parquet:{len(rows) + 1}"
    assert last.reason.startswith(f"Parquet rows {len(rows) + 1}-1000 cannot be read")


def test_nested_fields_kept_as_json_text_are_parsed_as_lines_are() -> None:
    cases = {
        '[{"role": "user", "content": "q"': "messages: not JSON: Expecting",
        '[{"role": "user", "content": "q", "n": 1' + "0" * 5000 + "}]": (
            "messages: not JSON: an integer of more than 4300 digits"
        ),
        '[{"role": "user", "content": "q", "x": NaN}]': "messages: not JSON: NaN is not",
    }
    for text, expected in cases.items():
        found = check_row({"messages": text}, "t.parquet:3")
        assert isinstance(found, InvalidRow), text
        assert found.reason.startswith(expected), found.reason
    row = check_row({"messages": '[{"role": "user", "content": "q"}]'}, "t.parquet:4")
    assert isinstance(row, Row) and row.prompt == [{"role": "user", "content": "q"}]
