"""The `moa` command's use of the garbage collector: off while a run command loads, frozen and
back on when it settles, never left off for the caller (langgraph_moa.cli.collector)."""

from __future__ import annotations

import contextlib
import gc
import io
from collections.abc import Iterator

import pytest

from langgraph_moa.cli import collector
from langgraph_moa.cli.app import main


@pytest.fixture(autouse=True)
def restore_collector() -> Iterator[None]:
    was_enabled = gc.isenabled()
    yield
    collector.unpause()
    gc.unfreeze()
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


def test_pause_then_settle_freezes_what_exists_and_turns_collection_back_on() -> None:
    gc.enable()
    gc.unfreeze()
    collector.pause()
    assert not gc.isenabled()
    loaded = [[i] for i in range(1000)]  # objects the collector tracks
    collector.settle()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(loaded)
    frozen = gc.get_freeze_count()
    collector.settle()  # a second settle (a chat's next turn) freezes nothing more
    # (frozen objects that die meanwhile, say in another test's leftover thread, leave the
    # frozen generation: the count can only go down)
    assert gc.get_freeze_count() <= frozen


def test_unpause_turns_collection_back_on_without_freezing() -> None:
    gc.enable()
    gc.unfreeze()
    collector.pause()
    collector.unpause()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_caller_that_turned_collection_off_keeps_it_off() -> None:
    gc.disable()
    collector.pause()
    collector.settle()
    assert not gc.isenabled()


COMMANDS = [["presets"], ["--help"], ["ask", ""], ["ask", "hi", "--estimate"]]


@pytest.mark.parametrize("args", COMMANDS)
def test_the_command_line_leaves_collection_on(args: list[str]) -> None:
    """Whether the command ran, showed help or failed on bad input before loading anything."""
    gc.enable()
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with quiet[0], quiet[1], pytest.raises(SystemExit):
        main(args)
    assert gc.isenabled()
