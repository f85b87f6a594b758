"""End to end through ``langgraph dev``: the real LangGraph server runs the ``moa-custom`` graph
factory from langgraph.json, the models are the fake OpenAI server, and everything is driven
through langgraph_sdk, as Studio or an application would.

The server runs in a temporary directory (it keeps its working files in ``.langgraph_api/``
under its current directory), with a copy of langgraph.json whose relative paths point back at
this project. It runs in its own process group, and only that group is signalled at the end.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import APIStatusError, BadRequestError

from langgraph_moa.errors import MoAInputError
from langgraph_moa.graphs.context import Context, topology_from_config
from langgraph_moa.graphs.studio import configurable
from langgraph_moa.testing.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
LANGGRAPH = Path(sys.executable).with_name("langgraph")
OFFLINE_ENV = {
    "LANGSMITH_TRACING": "false",
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
}
STARTUP_DEADLINE_S = 60.0
SCENARIO_DEADLINE_S = 120.0
STOP_GRACE_S = 10.0

PROPOSERS = [f"L{layer}/p{k}" for layer in (1, 2) for k in (1, 2, 3)]
TOPOLOGY: dict[str, Any] = {
    "name": "server-2x3",
    "layers": [
        {"proposers": [{"name": f"p{k}", "model": f"openai:p{k}"} for k in (1, 2, 3)]}
        for _ in (1, 2)
    ],
    "aggregator": {"model": "openai:agg"},
}

needs_cli = pytest.mark.skipif(not LANGGRAPH.exists(), reason="langgraph-cli is not installed")


# --- the factory in-process: how a config picks the topology --------------------------------


def test_topology_from_config_picks_topology_then_preset_then_local() -> None:
    assert topology_from_config({}).name == "local"
    assert topology_from_config({"configurable": {"topology": None}}).name == "local"
    assert topology_from_config({"configurable": {"preset": "moa-lite"}}).name == "moa-lite"
    both = {"configurable": {"topology": TOPOLOGY, "preset": "moa-lite"}}
    assert topology_from_config(both).name == "server-2x3"
    as_json = {"configurable": {"topology": json.dumps(TOPOLOGY)}}
    assert [a.name for a in topology_from_config(as_json).layers[1].proposers] == ["p1", "p2", "p3"]


@pytest.mark.parametrize(
    ("configurable_", "message"),
    [
        ({"topology": "{not json"}, "not valid JSON"),
        ({"topology": {"layers": []}}, "layers"),
        ({"preset": "nope"}, "unknown preset 'nope'"),
    ],
)
def test_topology_from_config_rejects_bad_input(
    configurable_: dict[str, Any], message: str
) -> None:
    with pytest.raises(MoAInputError, match=message):
        topology_from_config({"configurable": configurable_})


def test_configurable_factory_builds_the_configured_graph() -> None:
    graph = configurable({"configurable": {"topology": TOPOLOGY}})
    assert {*PROPOSERS, "prepare", "L1/join", "L2/join", "aggregator"} <= set(graph.nodes)
    assert graph.context_schema is Context
    assert graph.name == "server-2x3"


# --- the real server ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config_in(workdir: Path) -> Path:
    """Copy langgraph.json into ``workdir``, with its relative paths made absolute."""
    config = json.loads((ROOT / "langgraph.json").read_text(encoding="utf-8"))

    def absolute(path: str) -> str:
        return str((ROOT / path).resolve()) if path.startswith(".") else path

    config["dependencies"] = [absolute(dep) for dep in config.get("dependencies", [])]
    graphs = {}
    for graph_id, spec in config["graphs"].items():
        if isinstance(spec, dict):
            spec = {**spec, "path": absolute(spec["path"])}
        else:
            spec = absolute(spec)
        graphs[graph_id] = spec
    config["graphs"] = graphs
    if isinstance(config.get("env"), str):  # the keys file: this test's own, never the project's
        config["env"] = str(workdir / ".env")
    target = workdir / "langgraph.json"
    target.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return target


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Signal the server's own process group: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(timeout=STOP_GRACE_S)


@pytest.fixture
def server_url(fake: FakeOpenAI, tmp_path: Path) -> Iterator[str]:
    """A ``langgraph dev`` server whose OpenAI provider points at the fake server."""
    workdir = tmp_path / "server"
    workdir.mkdir()
    config = _config_in(workdir)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**dict(os.environ), **OFFLINE_ENV}
    # The OpenAI settings `fake` made reach the server only through the .env file that
    # langgraph.json names, as a user's keys do.
    dotenv = [f"{name}={env.pop(name)}" for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY")]
    (workdir / ".env").write_text("\n".join(dotenv) + "\n", encoding="utf-8")
    log_path = tmp_path / "server.log"
    command = [
        str(LANGGRAPH),
        "dev",
        "--config",
        str(config),
        "--no-browser",
        "--no-reload",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n-jobs-per-worker",
        "10",
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            if proc.poll() is not None:
                output = log_path.read_text(errors="replace")
                pytest.fail(f"langgraph dev exited with {proc.returncode}:\n{output[-8000:]}")
            try:
                with urllib.request.urlopen(f"{url}/ok", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                output = log_path.read_text(errors="replace")
                pytest.fail(
                    f"langgraph dev did not answer /ok within {STARTUP_DEADLINE_S:.0f}s:\n"
                    f"{output[-8000:]}"
                )
            time.sleep(0.25)
        yield url
    finally:
        _stop(proc)


async def _scenario(url: str, fake: FakeOpenAI) -> None:
    client = get_client(url=url, api_key=None, timeout=30.0)

    # --- an assistant per way of configuring it: config.configurable, and context ------------
    assistant = await client.assistants.create(
        "moa-custom", config={"configurable": {"topology": TOPOLOGY}}, name="2x3 via config"
    )
    by_context = await client.assistants.create(
        "moa-custom", context={"topology": TOPOLOGY}, name="2x3 via context"
    )
    assistant_id = assistant["assistant_id"]
    expected_nodes = {"prepare", "L1/join", "L2/join", "aggregator", *PROPOSERS}
    for created in (assistant, by_context):
        graph = await client.assistants.get_graph(created["assistant_id"], xray=True)
        nodes = {node["id"] for node in graph["nodes"]}
        assert expected_nodes <= nodes, sorted(nodes)
        assert not any(node.startswith("L3/") or "expert" in node for node in nodes)

    # --- what Studio shows: context fields with their descriptions, the input --------------
    schemas = await client.assistants.get_schemas(assistant_id)
    context_fields = (schemas.get("context_schema") or {}).get("properties", {})
    assert {"topology", "preset"} <= set(context_fields)
    assert "topology spec" in context_fields["topology"]["description"]
    assert "preset" in context_fields["preset"]["description"].lower()
    assert context_fields["preset"]["default"] == "local"
    assert "messages" in (schemas.get("input_schema") or {}).get("properties", {})

    # --- one run, streamed ----------------------------------------------------------------
    thread = await client.threads.create()
    thread_id = thread["thread_id"]
    tokens: list[str] = []
    custom: list[dict[str, Any]] = []
    updated: list[str] = []
    prompt: dict[str, Any] = {"messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    async for part in client.runs.stream(
        thread_id,
        assistant_id,
        input=prompt,
        stream_mode=["messages-tuple", "updates", "custom"],
    ):
        if part.event == "error":
            pytest.fail(f"the run failed: {part.data}")
        elif part.event == "messages":
            chunk, metadata = part.data
            if metadata.get("langgraph_node") == "aggregator":
                tokens.append(chunk.get("content") or "")
        elif part.event == "custom":
            custom.append(part.data)
        elif part.event == "updates":
            updated.extend(part.data)

    answer = "Answer 1 from agg."
    assert len([t for t in tokens if t]) > 1, tokens  # token by token, not one final message
    assert "".join(tokens) == answer
    for event in ("proposer_started", "proposer_finished"):
        seen = sorted(e["node"] for e in custom if e.get("event") == event)
        assert seen == sorted(PROPOSERS), (event, custom)
    assert all(e["ok"] for e in custom if e.get("event") == "proposer_finished")
    assert set(PROPOSERS) | {"prepare", "L1/join", "L2/join", "aggregator"} <= set(updated)
    assert len(fake.requests) == 7  # 6 proposers and the aggregator, nothing else
    assert len(fake.requests_for("agg")) == 1

    state = await client.threads.get_state(thread_id)
    values: Any = state["values"]
    assert values["messages"][-1]["content"] == answer
    assert state["next"] == []

    # --- history, and a fork right before the aggregator ----------------------------------
    history = await client.threads.get_history(thread_id, limit=100)
    assert len(history) >= 6, [h["next"] for h in history]
    before_agg = [h for h in history if h["next"] == ["aggregator"]]
    assert len(before_agg) == 1, [h["next"] for h in history]
    fork_point = before_agg[0]
    fork_meta: Any = fork_point["metadata"]
    last_meta: Any = history[0]["metadata"]
    assert fork_meta["step"] < last_meta["step"]
    fork_values: Any = fork_point["values"]
    second_layer = fork_values["layers"][1]
    edited = {**second_layer[0], "text": "An edited proposal about Rayleigh scattering."}
    assert edited["node"] == "L2/p1"

    update = await client.threads.update_state(
        thread_id, {"layers": [edited]}, as_node="L2/join", checkpoint=fork_point["checkpoint"]
    )
    forked = await client.threads.get_state(thread_id, checkpoint=update["checkpoint"])
    assert forked["next"] == ["aggregator"]
    forked_values: Any = forked["values"]
    assert forked_values["layers"][1][0]["text"] == edited["text"]

    sent_before = len(fake.requests)
    result = await client.runs.wait(
        thread_id, assistant_id, input=None, checkpoint=update["checkpoint"]
    )
    assert isinstance(result, dict), result
    assert len(fake.requests) == sent_before + 1  # only the aggregator ran again
    assert len(fake.requests_for("agg")) == 2
    rerun = fake.requests[-1]
    assert rerun.model == "agg"
    assert edited["text"] in rerun.last
    assert "Answer 2 from p1." not in rerun.last  # the replaced L2/p1 proposal
    assert "Answer 2 from p2." in rerun.last  # the others are kept
    assert result["messages"][-1]["content"] == "Answer 2 from agg."

    history_after = await client.threads.get_history(thread_id, limit=100)
    assert len(history_after) > len(history)


@pytest.mark.slow
@needs_cli
async def test_langgraph_dev_end_to_end(server_url: str, fake: FakeOpenAI) -> None:
    await asyncio.wait_for(_scenario(server_url, fake), SCENARIO_DEADLINE_S)


async def _cancel_scenario(url: str, fake: FakeOpenAI) -> None:
    client = get_client(url=url, api_key=None, timeout=30.0)
    assistant = await client.assistants.create(
        "moa-custom", config={"configurable": {"topology": TOPOLOGY}}, name="to cancel"
    )
    for k in (1, 2, 3):
        fake.behave(f"p{k}", latency_s=60)
    thread = await client.threads.create()
    prompt: dict[str, Any] = {"messages": [{"role": "user", "content": "Why?"}]}
    run = await client.runs.create(thread["thread_id"], assistant["assistant_id"], input=prompt)
    deadline = time.monotonic() + 30
    while len(fake.requests) < 3:  # the three proposers of layer 1 are waiting upstream
        assert time.monotonic() < deadline, "the run never reached the proposers"
        await asyncio.sleep(0.05)
    in_flight = list(fake.requests)
    await client.runs.cancel(thread["thread_id"], run["run_id"])
    cancelled_at = time.monotonic()
    while not all(r.disconnected for r in in_flight):
        assert time.monotonic() - cancelled_at < 5, "upstream requests outlived the cancelled run"
        await asyncio.sleep(0.02)
    assert len(fake.requests) == 3  # and nothing new was sent


@pytest.mark.slow
@needs_cli
async def test_cancelling_a_server_run_closes_its_upstream_requests(
    server_url: str, fake: FakeOpenAI
) -> None:
    await asyncio.wait_for(_cancel_scenario(server_url, fake), SCENARIO_DEADLINE_S)


# --- state edits, as Studio makes them ----------------------------------------------------


async def _bad_update(client: Any, thread_id: str, values: Any, as_node: str, **kw: Any) -> str:
    """The server's answer to an update it must refuse: a 400 (never a 500), and its detail."""
    with pytest.raises(APIStatusError) as caught:
        await client.threads.update_state(thread_id, values, as_node=as_node, **kw)
    response = caught.value.response
    assert response.status_code == 400, (response.status_code, response.text)
    assert isinstance(caught.value, BadRequestError)
    return str(response.text)


async def _state_edit_scenario(url: str, fake: FakeOpenAI) -> None:
    client = get_client(url=url, api_key=None, timeout=30.0)
    assistant = await client.assistants.create(
        "moa-custom", config={"configurable": {"topology": TOPOLOGY}}, name="edits"
    )
    assistant_id = assistant["assistant_id"]
    thread_id = (await client.threads.create())["thread_id"]
    prompt: dict[str, Any] = {"messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    first: Any = await client.runs.wait(thread_id, assistant_id, input=prompt)
    assert first["messages"][-1]["content"] == "Answer 1 from agg."
    history = await client.threads.get_history(thread_id, limit=100)
    fork_point = next(h for h in history if h["next"] == ["aggregator"])
    fork_values: Any = fork_point["values"]
    layers = fork_values["layers"]
    assert [p["node"] for p in layers[1]] == ["L2/p1", "L2/p2", "L2/p3"]

    async def edit(values: dict[str, Any], as_node: str, checkpoint: Any) -> tuple[Any, Any]:
        update = await client.threads.update_state(
            thread_id, values, as_node=as_node, checkpoint=checkpoint
        )
        state = await client.threads.get_state(thread_id, checkpoint=update["checkpoint"])
        return update, state

    # 1. the layers written back as they were read: accepted, nothing changes
    _, same = await edit({"layers": layers}, "L2/join", fork_point["checkpoint"])
    assert same["values"]["layers"] == layers and same["next"] == ["aggregator"]

    # 2. in the shape read: edit L2/p1's text, drop L2/p3; the aggregator sees exactly that
    edited = copy.deepcopy(layers)
    edited[1][0]["text"] = "An edited proposal about Rayleigh scattering."
    del edited[1][2]
    update, state = await edit({"layers": edited}, "L2/join", fork_point["checkpoint"])
    assert state["values"]["layers"] == edited and state["next"] == ["aggregator"]
    sent = len(fake.requests)
    rerun: Any = await client.runs.wait(
        thread_id, assistant_id, input=None, checkpoint=update["checkpoint"]
    )
    assert len(fake.requests) == sent + 1 and fake.requests[-1].model == "agg"
    system = fake.requests[-1].last
    assert "An edited proposal about Rayleigh scattering." in system
    assert "Answer 2 from p2." in system  # kept
    assert "Answer 2 from p1." not in system and "Answer 2 from p3." not in system
    assert rerun["messages"][-1]["content"] == "Answer 2 from agg."

    # 3. swap the aggregator: the run's own config names the topology (a thread keeps the
    # config of its first run otherwise, whatever assistant runs it next)
    swapped = {**TOPOLOGY, "aggregator": {"model": "openai:agg2"}}
    other: Any = await client.runs.wait(
        thread_id,
        assistant_id,
        input=None,
        checkpoint=fork_point["checkpoint"],
        config={"configurable": {"topology": swapped}},
    )
    assert other["messages"][-1]["content"] == "Answer 1 from agg2."
    assert other["aggregator"]["model"] == "openai:agg2"
    assert len(fake.requests_for("agg2")) == 1

    # 4. edit the final answer: the message as read (same id), new text; and its record
    latest: Any = await client.threads.get_state(thread_id)
    answer = {**latest["values"]["messages"][-1], "content": "A hand-written final answer."}
    record = {**latest["values"]["aggregator"], "text": answer["content"]}
    _, final = await edit(
        {"messages": [answer], "aggregator": record}, "aggregator", latest["checkpoint"]
    )
    final_values: Any = final["values"]
    assert [m["content"] for m in final_values["messages"]] == [
        "Why is the sky blue?",
        "A hand-written final answer.",
    ]
    assert final_values["aggregator"]["text"] == "A hand-written final answer."
    assert final["next"] == []

    # 5. malformed updates: a 400 naming the key and what is wrong, never a 500
    at = fork_point["checkpoint"]
    text = await _bad_update(client, thread_id, {"layers": "nope"}, "L2/join", checkpoint=at)
    assert "layers: expected a list of proposals" in text
    text = await _bad_update(
        client, thread_id, {"layers": [{"text": "only a text"}]}, "L2/join", checkpoint=at
    )
    assert "layers[0]: missing name, node, model, ok, error" in text
    misplaced = [[layers[1][0]]]
    text = await _bad_update(client, thread_id, {"layers": misplaced}, "L2/join", checkpoint=at)
    assert "says layer 2 but sits in layer 1" in text
    text = await _bad_update(client, thread_id, {"layers": layers}, "L9/join", checkpoint=at)
    assert "L9/join" in text
    for key, value, said in [
        ("messages", 5, "messages: Unsupported message type"),
        ("aggregator", 5, "aggregator: Input should be a valid dictionary"),
        ("usage", {"total_tokens": 1}, "usage: missing prompt_tokens"),
        ("degraded", "no", "degraded: expected true or false"),
    ]:
        text = await _bad_update(client, thread_id, {key: value}, "aggregator", checkpoint=at)
        assert said in text, text
    after: Any = await client.threads.get_state(thread_id)
    assert after["checkpoint"] == final["checkpoint"]  # nothing was written by the refusals


@pytest.mark.slow
@needs_cli
async def test_state_edits_through_the_server(server_url: str, fake: FakeOpenAI) -> None:
    await asyncio.wait_for(_state_edit_scenario(server_url, fake), SCENARIO_DEADLINE_S)
