"""The Batch API adapters (langgraph_moa.llm.batch_api) through the real openai and anthropic
clients against the fake servers' Batch APIs: a batch sent, polled to its end and its results
streamed; per-request faults, expiry, cancelling a straggler, the providers' rules (one model,
size limits, custom_id) and finding a batch whose id was lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from langgraph_moa.llm.batch_api import (
    AnthropicBatchAPI,
    BatchAPI,
    BatchAPIError,
    BatchClients,
    BatchResult,
    BatchStatus,
    OpenAIBatchAPI,
)
from langgraph_moa.testing.fake_anthropic import FakeAnthropic, text_of_content
from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.conftest import ANTHROPIC_KEY, TEST_KEY

TURNAROUND_S = 0.2


def echo(body: dict[str, Any], number: int, choice: int) -> str:
    """A reply that depends only on the request (so a batch and a live call agree)."""
    said = text_of_content(body["messages"][-1]["content"])
    return f"{body['model']} heard '{said}' (sample {choice + 1})"


@pytest.fixture
async def clients(fake: FakeOpenAI, claude: FakeAnthropic) -> AsyncIterator[BatchClients]:
    fake.batches.behavior.turnaround_s = TURNAROUND_S
    claude.batches.behavior.turnaround_s = TURNAROUND_S
    async with BatchClients() as owner:
        yield owner


def oa_api(clients: BatchClients, model: str = "openai:m") -> OpenAIBatchAPI:
    api = clients.get(model)
    assert isinstance(api, OpenAIBatchAPI)
    return api


def an_api(clients: BatchClients) -> AnthropicBatchAPI:
    api = clients.get("anthropic:claude-a")
    assert isinstance(api, AnthropicBatchAPI)
    return api


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def message(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}


def write(path: Path, api: BatchAPI, requests: list[tuple[str, dict[str, Any]]]) -> Path:
    with path.open("wb") as out:
        for custom_id, body in requests:
            out.write(api.line(custom_id, body))
    return path


async def ended(api: BatchAPI, batch_id: str, timeout_s: float = 10) -> BatchStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        status = await api.status(batch_id)
        if status.state == "ended":
            return status
        assert time.monotonic() < deadline, f"{batch_id} did not end: {status}"
        await asyncio.sleep(0.05)


async def results(api: BatchAPI, batch_id: str) -> dict[str, BatchResult]:
    found = {}
    async for result in api.results(batch_id):
        assert result.custom_id not in found
        found[result.custom_id] = result
    return found


def without_moment(body: dict[str, Any] | None) -> dict[str, Any]:
    """A reply without what differs between two identical calls (its id, its time)."""
    assert body is not None
    return {k: v for k, v in body.items() if k not in ("id", "created")}


# --- a batch, end to end --------------------------------------------------------------------
async def test_an_openai_batch_is_answered_as_the_live_calls_would_be(
    fake: FakeOpenAI, clients: BatchClients, tmp_path: Path
) -> None:
    fake.behave("m", reply=echo)
    api = oa_api(clients)
    bodies = {
        "q-0": chat("m", "first"),
        "q-1": chat("m", "second", n=2),
        "q-2": chat("m", "third", max_tokens=7),
    }
    path = write(tmp_path / "wave.jsonl", api, list(bodies.items()))

    started = time.time()
    batch_id = await api.submit(path, model="openai:m", tag="run-1/wave-0")
    early = await api.status(batch_id)
    assert (early.state, early.outcome) == ("pending", None)
    status = await ended(api, batch_id)
    assert (status.outcome, status.total, status.done, status.failed) == ("completed", 3, 3, 0)
    assert status.created_at >= int(started) and status.errors == []
    assert time.time() - started >= TURNAROUND_S

    got = await results(api, batch_id)
    assert sorted(got) == sorted(bodies)
    assert all(r.error is None and not r.unfinished for r in got.values())
    logged = fake.requests_for("m")
    assert len(logged) == 3 and {r.batch for r in logged} == {batch_id}
    assert [r.body for r in logged] == list(bodies.values())  # in file order

    live = openai.AsyncOpenAI(api_key=TEST_KEY, base_url=fake.base_url)
    try:
        for custom_id, body in bodies.items():
            answer = (await live.chat.completions.with_raw_response.create(**body)).http_response
            assert without_moment(got[custom_id].body) == without_moment(answer.json())
    finally:
        await live.close()
    assert got["q-1"].body is not None and len(got["q-1"].body["choices"]) == 2
    assert [r.batch for r in fake.requests_for("m")][3:] == [None] * 3  # the live ones
    info = fake.batches.created()
    assert [(b.id, b.models, b.requests, b.status) for b in info] == [
        (batch_id, ("m",), 3, "completed")
    ]
    assert info[0].metadata["moa_batch"] == "run-1/wave-0" and fake.batches.creates == 1


async def test_an_anthropic_batch_with_two_models_is_answered_as_live_calls_would_be(
    claude: FakeAnthropic, clients: BatchClients, tmp_path: Path
) -> None:
    for model in ("claude-a", "claude-b"):
        claude.behave(model, reply=echo)
    api = an_api(clients)
    bodies = {
        "r0": message("claude-a", "one"),
        "r1": message("claude-b", "two"),
        "r2": message("claude-a", "three"),
    }
    path = write(tmp_path / "wave.jsonl", api, list(bodies.items()))
    batch_id = await api.submit(path, model="anthropic:claude-a", tag="ignored")
    pending = await api.status(batch_id)
    assert (pending.state, pending.total, pending.done) == ("pending", 3, 0)
    status = await ended(api, batch_id)
    assert (status.outcome, status.total, status.done, status.failed) == ("completed", 3, 3, 0)

    got = await results(api, batch_id)
    assert sorted(got) == ["r0", "r1", "r2"]
    assert [r.batch for r in claude.requests] == [batch_id] * 3
    assert len(claude.requests_for("claude-a")) == 2
    live = anthropic.AsyncAnthropic(api_key=ANTHROPIC_KEY, base_url=claude.base_url)
    try:
        for custom_id, body in bodies.items():
            answer = await live.messages.with_raw_response.create(**body)
            assert without_moment(got[custom_id].body) == without_moment(
                answer.http_response.json()
            )
    finally:
        await live.close()
    (made,) = claude.batches.created()
    assert made.models == ("claude-a", "claude-b") and made.status == "ended"
    # the create body was streamed from the file with its length given, not chunked
    assert made.headers["content-length"] == str(path.stat().st_size - 1 + 15)
    assert "transfer-encoding" not in made.headers
    assert claude.key_of(claude.requests[0]) == ANTHROPIC_KEY  # sent with the create call


async def test_together_shares_the_openai_shape_with_its_own_limits(
    fake: FakeOpenAI, clients: BatchClients, tmp_path: Path
) -> None:
    api = oa_api(clients, "together:m")
    assert api is not oa_api(clients) and api.limits.max_bytes == 100_000_000
    path = write(tmp_path / "t.jsonl", api, [("a", chat("m", "hi"))])
    batch_id = await api.submit(path, model="together:m", tag="t")
    assert (await ended(api, batch_id)).outcome == "completed"
    (only,) = (await results(api, batch_id)).values()
    assert only.body is not None and only.body["choices"][0]["message"]["content"]


# --- per-request failures, expiry, cancel ----------------------------------------------------
async def test_a_fault_is_that_requests_error_result(
    fake: FakeOpenAI, claude: FakeAnthropic, clients: BatchClients, tmp_path: Path
) -> None:
    fake.behave("m", faults=[429, 400])
    api = oa_api(clients)
    path = write(tmp_path / "f.jsonl", api, [(f"q{k}", chat("m", f"x{k}")) for k in range(3)])
    batch_id = await api.submit(path, model="openai:m", tag="faults")
    status = await ended(api, batch_id)
    assert (status.outcome, status.done, status.failed) == ("completed", 3, 2)
    got = await results(api, batch_id)
    assert got["q0"].error == "HTTP 429: injected failure 429" and got["q0"].retryable
    assert got["q1"].error == "HTTP 400: injected failure 400" and not got["q1"].retryable
    assert got["q2"].body is not None and got["q2"].error is None
    assert not any(r.unfinished for r in got.values())
    assert [r.status for r in fake.requests_for("m")] == [429, 400, 200]

    claude.behave("claude-a", faults=[529])
    claude.behave("claude-b", faults=[400])
    an = an_api(clients)
    rows = [("a", message("claude-a", "x")), ("b", message("claude-b", "y"))]
    path = write(tmp_path / "g.jsonl", an, [*rows, ("c", message("claude-a", "z"))])
    batch_id = await an.submit(path, model="anthropic:claude-a", tag="faults")
    assert (await ended(an, batch_id)).failed == 2
    got = await results(an, batch_id)
    assert got["a"].error == "HTTP 529: injected failure 529" and got["a"].retryable
    assert got["b"].error == "HTTP 400: injected failure 400" and not got["b"].retryable
    assert got["c"].body is not None


async def test_a_key_echoed_in_an_error_result_is_masked(
    fake: FakeOpenAI, clients: BatchClients, tmp_path: Path
) -> None:
    fake.behave("m", faults=[401], error_message="Incorrect API key provided: {key}")
    api = oa_api(clients)
    batch_id = await api.submit(
        write(tmp_path / "k.jsonl", api, [("q", chat("m", "hi"))]), model="m", tag="k"
    )
    await ended(api, batch_id)
    (result,) = (await results(api, batch_id)).values()
    assert result.error == "HTTP 401: Incorrect API key provided: ***"
    assert fake.requests_for("m")[0].fault == 401  # the key did reach the server


async def test_an_expired_batch_leaves_its_last_requests_unfinished(
    fake: FakeOpenAI, claude: FakeAnthropic, clients: BatchClients, tmp_path: Path
) -> None:
    fake.batches.behavior.expire_last = 2
    api = oa_api(clients)
    path = write(tmp_path / "e.jsonl", api, [(f"q{k}", chat("m", f"x{k}")) for k in range(3)])
    batch_id = await api.submit(path, model="m", tag="e")
    status = await ended(api, batch_id)
    assert (status.outcome, status.total, status.done) == ("expired", 3, 1)
    got = await results(api, batch_id)
    assert got["q0"].body is not None
    for late in ("q1", "q2"):
        assert got[late].unfinished and got[late].retryable and got[late].body is None
        assert (got[late].error or "").startswith("batch_expired: ")
    assert len(fake.requests_for("m")) == 1  # the expired ones never ran

    claude.batches.behavior.expire_fraction = 0.5
    an = an_api(clients)
    path = write(tmp_path / "f.jsonl", an, [(f"r{k}", message("claude-a", "x")) for k in range(3)])
    batch_id = await an.submit(path, model="claude-a", tag="e")
    status = await ended(an, batch_id)
    assert (status.outcome, status.total, status.done) == ("expired", 3, 1)
    got = await results(an, batch_id)
    assert [got[k].unfinished for k in ("r0", "r1", "r2")] == [False, True, True]
    assert got["r2"].error == "expired: the batch expired before it ran"


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
async def test_cancelling_a_held_batch_keeps_what_was_answered(
    shape: str, fake: FakeOpenAI, claude: FakeAnthropic, clients: BatchClients, tmp_path: Path
) -> None:
    server: FakeOpenAI = fake if shape == "openai" else claude
    server.batches.behavior.hold = True
    server.batches.behavior.hold_done = 1
    api: BatchAPI = oa_api(clients) if shape == "openai" else an_api(clients)
    body = chat if shape == "openai" else message
    model = "m" if shape == "openai" else "claude-a"
    path = write(tmp_path / "h.jsonl", api, [(f"q{k}", body(model, f"x{k}")) for k in range(3)])
    batch_id = await api.submit(path, model=model, tag="held")
    await asyncio.sleep(TURNAROUND_S * 2)
    for _ in range(3):  # a straggler: past its turnaround, still not done
        assert (await api.status(batch_id)).state == "pending"
        await asyncio.sleep(0.05)
    assert [b.answered for b in server.batches.created()] == [1]
    assert [r async for r in api.results(batch_id)] == []  # nothing before the end

    await api.cancel(batch_id)
    await api.cancel(batch_id)  # twice is harmless
    status = await ended(api, batch_id)
    assert (status.outcome, status.total, status.done) == ("cancelled", 3, 1)
    got = await results(api, batch_id)
    assert got["q0"].body is not None and not got["q0"].unfinished
    assert got["q1"].unfinished and got["q2"].unfinished and got["q2"].retryable
    assert len(server.requests_for(model)) == 1
    await api.cancel(batch_id)  # an ended batch is left as it is


async def test_a_released_batch_finishes(
    fake: FakeOpenAI, clients: BatchClients, tmp_path: Path
) -> None:
    fake.batches.behavior.hold = True
    api = oa_api(clients)
    path = write(tmp_path / "r.jsonl", api, [("a", chat("m", "x")), ("b", chat("m", "y"))])
    batch_id = await api.submit(path, model="m", tag="r")
    await asyncio.sleep(TURNAROUND_S * 1.5)
    assert (await api.status(batch_id)).state == "pending"
    fake.batches.release(batch_id)
    assert (await ended(api, batch_id)).outcome == "completed"
    assert len(await results(api, batch_id)) == 2


# --- the providers' rules ------------------------------------------------------------------
async def test_openai_refuses_a_file_that_breaks_its_rules(
    fake: FakeOpenAI, clients: BatchClients, tmp_path: Path
) -> None:
    api = oa_api(clients)

    async def refused(name: str, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
        batch_id = await api.submit(write(tmp_path / name, api, rows), model="m", tag=name)
        status = await ended(api, batch_id)
        assert (status.outcome, status.total, status.done) == ("failed", 0, 0)
        assert [r async for r in api.results(batch_id)] == []
        return status.errors

    mixed = await refused("mixed.jsonl", [("a", chat("m", "x")), ("b", chat("other", "y"))])
    assert len(mixed) == 1 and mixed[0].startswith("mismatched_model: The provided model 'other'")
    assert mixed[0].endswith("(line 2)")
    twice = await refused("twice.jsonl", [("a", chat("m", "x")), ("a", chat("m", "y"))])
    assert len(twice) == 1 and twice[0].startswith("duplicate_custom_id: ")

    fake.batches.behavior.max_requests = 2
    many = await refused("many.jsonl", [(f"q{k}", chat("m", "x")) for k in range(3)])
    assert many == [
        "too_many_requests: The input file has 3 requests, more than the 2 a batch may hold."
    ]
    fake.batches.behavior.max_requests = 50_000
    fake.batches.behavior.max_bytes = 100
    path = write(tmp_path / "big.jsonl", api, [("q", chat("m", "x" * 200))])
    big = await refused("big.jsonl", [("q", chat("m", "x" * 200))])
    assert big == [
        f"file_too_large: The input file has {path.stat().st_size} bytes, more than "
        "the 100 a batch may hold."
    ]
    assert fake.requests == []  # nothing of a refused batch ran
    assert [b.status for b in fake.batches.created()] == ["failed"] * 4


async def test_anthropic_refuses_a_batch_that_breaks_its_rules(
    claude: FakeAnthropic, clients: BatchClients, tmp_path: Path
) -> None:
    api = an_api(clients)

    async def refused(rows: list[tuple[str, dict[str, Any]]], raw: bytes = b"") -> BatchAPIError:
        path = tmp_path / "refused.jsonl"
        write(path, api, rows)
        if raw:
            path.write_bytes(raw)
        with pytest.raises(BatchAPIError) as caught:
            await api.submit(path, model="claude-a", tag="x")
        assert ANTHROPIC_KEY not in str(caught.value)
        return caught.value

    twice = await refused([("a", message("claude-a", "x")), ("a", message("claude-a", "y"))])
    assert twice.status == 400 and not twice.transient
    assert str(twice) == (
        "anthropic Batch API: creating the batch failed: HTTP 400: requests: custom_id 'a' is "
        "used more than once"
    )
    bad_id = b'{"custom_id":"not ok!","params":{"model":"claude-a"}}\n'
    assert "custom_id: String should match pattern" in str(await refused([], raw=bad_id))

    claude.batches.behavior.max_requests = 2
    many = await refused([(f"q{k}", message("claude-a", "x")) for k in range(3)])
    assert "at most 2 items" in str(many)
    claude.batches.behavior.max_requests = 100_000
    claude.batches.behavior.one_model = True
    mixed = await refused([("a", message("claude-a", "x")), ("b", message("claude-b", "y"))])
    assert "one model per batch" in str(mixed)
    claude.batches.behavior.one_model = False
    claude.batches.behavior.max_bytes = 100
    big = await refused([("q", message("claude-a", "x" * 200))])
    assert big.status == 413 and "maximum allowed number of bytes" in str(big)
    assert claude.batches.created() == [] and claude.batches.creates == 5
    assert claude.requests == []


# --- finding a batch whose id was not kept -------------------------------------------------
async def test_a_batch_is_found_again_by_its_tag(
    fake: FakeOpenAI, clients: BatchClients, tmp_path: Path
) -> None:
    api = oa_api(clients)
    since = time.time()
    ids = []
    for k in range(3):
        path = write(
            tmp_path / f"{k}.jsonl", api, [(f"q{j}", chat("m", "x")) for j in range(k + 1)]
        )
        ids.append(await api.submit(path, model="m", tag=f"run-9/wave-{k}"))
    assert await api.find("run-9/wave-1", since=since - 1, requests=2) == ids[1]
    assert await api.find("run-9/wave-0", since=since - 1, requests=1) == ids[0]
    assert await api.find("run-9/wave-3", since=since - 1, requests=1) is None
    assert await api.find("run-9/wave-0", since=time.time() + 5, requests=1) is None
    # the list pages through every batch, newest first
    listed = [b.id async for b in api.client.batches.list(limit=1)]
    assert listed == ids[::-1]


async def test_an_anthropic_batch_is_found_again_by_its_time_and_size(
    claude: FakeAnthropic, clients: BatchClients, tmp_path: Path
) -> None:
    api = an_api(clients)
    old = await api.submit(
        write(tmp_path / "old.jsonl", api, [("a", message("claude-a", "x"))]), model="c", tag="x"
    )
    await asyncio.sleep(0.05)
    since = time.time()
    rows = [(f"q{j}", message("claude-a", "x")) for j in range(3)]
    new = await api.submit(write(tmp_path / "new.jsonl", api, rows), model="c", tag="y")
    assert await api.find("y", since=since, requests=3) == new
    assert await api.find("x", since=since, requests=1) is None  # too old
    assert await api.find("x", since=since - 60, requests=1) == old
    listed = [b.id async for b in api.client.messages.batches.list(limit=1)]
    assert listed == [new, old]
    newer = await api.client.messages.batches.list(limit=5, before_id=old)
    assert [b.id for b in newer.data] == [new]


async def test_clients_are_shared_by_provider_and_closed_on_exit(
    fake: FakeOpenAI, claude: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with BatchClients() as owner:
        first = oa_api(owner, "openai:m")
        assert oa_api(owner, "openai:other-model") is first
        assert owner.get("groq:m") is None
        monkeypatch.setenv("OPENAI_API_KEY", "sk-another-key-for-the-same-provider")
        assert oa_api(owner, "openai:m") is not first
        claude_api = an_api(owner)
    assert first.client.is_closed() and claude_api.client.is_closed()


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
async def test_a_file_of_many_read_chunks_arrives_whole(
    shape: str, fake: FakeOpenAI, claude: FakeAnthropic, clients: BatchClients, tmp_path: Path
) -> None:
    server: FakeOpenAI = fake if shape == "openai" else claude
    api: BatchAPI = oa_api(clients) if shape == "openai" else an_api(clients)
    body = chat if shape == "openai" else message
    model = "m" if shape == "openai" else "claude-a"
    rows = [(f"q{k}", body(model, f"{k} " + "wörd " * 300)) for k in range(150)]
    path = write(tmp_path / "many.jsonl", api, rows)
    assert path.stat().st_size > 3 * 65536  # several reads, multipart and body alike
    batch_id = await api.submit(path, model=model, tag="many")
    assert (await ended(api, batch_id)).done == 150
    assert len(await results(api, batch_id)) == 150
    assert [r.body for r in server.requests_for(model)] == [b for _, b in rows]
