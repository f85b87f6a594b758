"""Capture keeps intent, end to end: ``moa serve --capture`` keeps a request's response format,
tools, tool choice and sampling fields in the captured row; ``moa relabel`` of the capture
directory gives them to the aggregator (the request at the fake upstream carries them), checks
that a JSON-mode answer parses (a reply that is not JSON makes the row degraded,
``invalid_json``, and keeps it out of the exports) and refuses a row whose message content was
hashed at capture, saying so."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from langgraph_moa.batch.row_check import InvalidRow, Row, check_row
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import run_moa
from tests.integration.test_serve import fake_env, free_port, start, stop
from tests.integration.test_serve_capture import WEATHER_TOOL, rows

# the fourth message of a conversation (a later user turn) is hashed; shorter ones are kept
CONFIG = "hash: [messages.3.content]\n"
TOPOLOGY = (
    "name: mix\nlayers:\n"
    "  - proposers: [{name: a, model: 'openai:a'}, {name: b, model: 'openai:b'}]\n"
    "aggregator: {model: 'openai:agg'}\n"
)
WEATHER_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "Weather",
        "schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}


def aggregator_reply(body: dict[str, Any], number: int, choice: int) -> str:
    """JSON when the question asks for it and says "good", prose otherwise."""
    asked = json.dumps(body["messages"])
    if "JSON" in asked and "good" in asked:
        return '{"city": "Lyon", "sky": "clear"}'
    if "JSON" in asked:
        return 'Here is the JSON: {"city": "Lyon"'  # prose around broken JSON
    return "A plain answer."


@pytest.mark.slow
def test_captured_intent_reaches_the_aggregator_and_json_is_checked(
    _server: FakeOpenAI, fake: FakeOpenAI, tmp_path: Path
) -> None:
    captured = tmp_path / "captured"
    config = tmp_path / "capture.yaml"
    config.write_text(CONFIG)
    server = start(
        ["--capture", str(captured), "--capture-config", str(config)],
        fake_env(_server),
        free_port(),
        tmp_path / "serve.log",
        None,
    )
    try:
        client = server.client()
        client.chat.completions.create(  # JSON mode
            model="capture/openai:gpt-x",
            messages=[{"role": "user", "content": "The weather in JSON, a good one"}],
            response_format={"type": "json_object"},
        )
        schema_request: dict[str, Any] = {  # a JSON schema, tools and every sampling field
            "model": "capture/openai:gpt-x",
            "messages": [{"role": "user", "content": "The weather in JSON, quickly"}],
            "response_format": WEATHER_SCHEMA,
            "tools": [WEATHER_TOOL],
            "tool_choice": "none",
            "parallel_tool_calls": False,
            "temperature": 0.2,
            "top_p": 0.9,
            "max_completion_tokens": 300,
            "seed": 42,
            "stop": ["END"],
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
        }
        client.chat.completions.create(**schema_request)
        client.chat.completions.create(  # prose, a length limit under its classic name
            model="capture/openai:gpt-x",
            messages=[{"role": "user", "content": "Tell me about Lyon"}],
            max_tokens=120,
            temperature=0.0,
        )
        client.chat.completions.create(  # a conversation whose later turn is hashed
            model="capture/openai:gpt-x",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": "My card number is 4111 1111 1111 1111"},
            ],
        )
    finally:
        log = stop(server)  # drains the capture queue
    assert "Traceback" not in log, log

    json_row, schema_row, prose_row, hashed_row = rows(captured)
    assert json_row["response_format"] == {"type": "json_object"}
    assert "tools" not in json_row and "temperature" not in json_row
    expected = {
        "response_format": WEATHER_SCHEMA,
        "tools": [WEATHER_TOOL],
        "tool_choice": "none",
        "parallel_tool_calls": False,
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 300,
        "seed": 42,
        "stop": ["END"],
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
    }
    assert {k: schema_row.get(k) for k in expected} == expected
    assert prose_row["max_tokens"] == 120 and prose_row["temperature"] == 0.0
    assert hashed_row["messages"][3]["content"].startswith("sha256:")
    assert "4111" not in json.dumps(hashed_row)

    fake.behave("agg", reply=aggregator_reply)
    topology = tmp_path / "mix.yaml"
    topology.write_text(TOPOLOGY)
    out = tmp_path / "runs"
    result = run_moa("relabel", str(captured), "-t", str(topology), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["totals"]["done"] == 3 and summary["totals"]["invalid"] == 1, summary
    assert summary["totals"]["degraded"] == 1, summary

    # what the aggregator was asked with, row by row (the proposers keep their own settings)
    agg = {
        next(q for q in ("good one", "quickly", "Lyon") if q in json.dumps(r.body)): r.body
        for r in fake.requests_for("agg")
    }
    assert agg["good one"]["response_format"] == {"type": "json_object"}
    assert "tools" not in agg["good one"] and "seed" not in agg["good one"]
    schema_call = agg["quickly"]
    assert schema_call["response_format"] == WEATHER_SCHEMA
    assert schema_call["tools"] == [WEATHER_TOOL] and schema_call["tool_choice"] == "none"
    assert schema_call["parallel_tool_calls"] is False
    for name in ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty"):
        assert schema_call[name] == expected[name], name
    assert 300 in (schema_call.get("max_tokens"), schema_call.get("max_completion_tokens"))
    assert 120 in (agg["Lyon"].get("max_tokens"), agg["Lyon"].get("max_completion_tokens"))
    assert agg["Lyon"]["temperature"] == 0.0 and "response_format" not in agg["Lyon"]
    for model in ("a", "b"):
        for request in fake.requests_for(model):
            assert "response_format" not in request.body and request.body.get("seed") is None

    run_dir = out / summary["name"]
    with sqlite3.connect(run_dir / "ledger.sqlite") as conn:
        records = {
            row_id: json.loads(blob) for row_id, blob in conn.execute("SELECT id, record FROM rows")
        }
        (invalid,) = list(conn.execute("SELECT id, reason FROM invalid"))
    by_id = {r["id"]: r for r in records.values()}
    good, bad, prose = by_id[json_row["id"]], by_id[schema_row["id"]], by_id[prose_row["id"]]
    assert good["status"] == "done" and good["degraded"] is False
    assert not good.get("degraded_reasons")
    assert json.loads(good["result"]["answer"]) == {"city": "Lyon", "sky": "clear"}
    assert bad["status"] == "done" and bad["degraded"] is True
    assert bad["degraded_reasons"] == ["invalid_json"]
    assert prose["status"] == "done" and prose["degraded"] is False  # prose is not checked
    assert invalid == (
        hashed_row["id"],
        "messages.3.content was hashed at capture; it cannot be relabeled",
    )

    sft = tmp_path / "sft.jsonl"
    exported = run_moa("export", str(run_dir), "--format", "sft", "-o", str(sft))
    assert exported.returncode == 0, exported.stderr
    answers = [json.loads(line)["messages"][-1]["content"] for line in sft.read_text().splitlines()]
    assert sorted(answers) == sorted(['{"city": "Lyon", "sky": "clear"}', "A plain answer."])


def row_of(**fields: Any) -> Row | InvalidRow:
    return check_row(
        {"id": "x", "messages": [{"role": "user", "content": "hi"}], **fields}, "t.jsonl:1"
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": -1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "needs json_schema"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_bad_writer_fields_make_the_row_invalid(fields: dict[str, Any], reason: str) -> None:
    found = row_of(**fields)
    assert isinstance(found, InvalidRow) and reason in found.reason, found


@pytest.mark.parametrize(
    "content",
    [
        "sha256:" + "ab" * 32,
        [{"type": "text", "text": "sha256:" + "0f" * 32}],
        [{"type": "image_url", "image_url": {"url": "sha256:" + "00" * 32}}],
    ],
)
def test_hashed_content_in_any_part_makes_the_row_invalid(content: Any) -> None:
    found = check_row({"messages": [{"role": "user", "content": content}]}, "t.jsonl:1")
    assert isinstance(found, InvalidRow)
    assert found.reason == "messages.0.content was hashed at capture; it cannot be relabeled"
    # text that only mentions a digest is text
    mention = check_row({"messages": [{"role": "user", "content": "is sha256:ab ok?"}]}, "t:1")
    assert isinstance(mention, Row)


def test_writer_fields_become_aggregator_options() -> None:
    found = row_of(
        response_format={"type": "text"},
        max_tokens=50,
        max_completion_tokens=80,
        stop="END",
        parallel_tool_calls=True,  # no tools: nothing to run in parallel
    )
    assert isinstance(found, Row)
    assert found.inputs()["aggregator_options"] == {"max_tokens": 80, "stop": ["END"]}
    assert not found.json_mode
    plain = row_of()
    assert isinstance(plain, Row) and "aggregator_options" not in plain.inputs()
