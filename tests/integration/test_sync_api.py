"""The sync API (``graph.invoke``, ``ChatMixtureOfAgents.invoke``/``stream``) runs on one shared
event loop: file descriptors stay flat over many calls, even under a low descriptor limit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from langgraph_moa.testing.fake_openai import FakeOpenAI
from tests.integration.test_serve import fake_env

MANY_CALLS = """
import os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
from langchain_core.messages import HumanMessage
from langgraph_moa import ChatMixtureOfAgents, Topology, build_graph

topology = Topology.model_validate({
    "layers": [{"proposers": [{"model": f"openai:{m}"} for m in "abc"]}],
    "aggregator": {"model": "openai:agg"},
})
graph = build_graph(topology, cache=False)
llm = ChatMixtureOfAgents(topology=topology)

def fds():
    return len(os.listdir("/proc/self/fd"))

def calls(k):
    for i in range(k):
        assert graph.invoke({"messages": [HumanMessage(f"q{i}")]})["messages"][-1].content
        assert llm.invoke(f"q{i}").content
        assert "".join(c.content for c in llm.stream(f"q{i}"))

calls(10)
after_10 = fds()
calls(int(sys.argv[1]))
print(after_10, fds())
"""


@pytest.mark.slow
def test_file_descriptors_stay_flat_over_many_sync_calls(fake: FakeOpenAI) -> None:
    done = subprocess.run(
        [sys.executable, "-c", MANY_CALLS, "60"],
        capture_output=True,
        text=True,
        timeout=600,
        env=fake_env(fake),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    after_10, after_70 = map(int, done.stdout.split())
    assert after_70 <= after_10 + 2, (after_10, after_70)  # 180 more calls, no more sockets
    assert len(fake.requests) == 70 * 3 * 4  # every call really went out


async def test_a_sync_call_inside_a_running_loop_still_works(fake: FakeOpenAI) -> None:
    """Called from async code (a notebook cell, an async app), the sync API does not deadlock
    and does not need its own loop."""
    from langgraph_moa import ChatMixtureOfAgents, Topology

    topology = Topology.model_validate(
        {"layers": [{"proposers": [{"model": "openai:a"}]}], "aggregator": {"model": "openai:agg"}}
    )
    reply = ChatMixtureOfAgents(topology=topology).invoke("hi")
    assert reply.content == "Answer 1 from agg."
