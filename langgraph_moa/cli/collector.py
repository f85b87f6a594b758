"""How a ``moa`` process uses Python's cyclic garbage collector: off while a run command loads
the engine, then out of the way of what was loaded, and not run over the whole heap at exit.

A cold ``moa ask`` imports LangGraph, LangChain, langsmith, langchain-openai and the openai client:
a few hundred thousand long-lived objects (modules, classes, pydantic schemas), almost none of
them garbage. With the collector on, every full collection during those imports walks all of
them again; and at exit the interpreter collects the whole heap once more, which took longer
than the 1.2 s run itself on the development machine (``gc_collect_main`` in a py-spy profile of
a cold ``moa ask``). What this module does instead, as Python's documentation suggests for
long-lived processes (``gc.freeze``):

- :func:`pause` (at the command line's start): collection off while a run command (ask, chat,
  resume, fork) imports and sets up the engine;
- :func:`settle` (when that is done, just before the run): move every object made so far to the
  permanent generation, where no collection looks at it, and turn collection back on, so the
  run's own collections only look at the run's objects (:func:`unpause` turns it back on without
  freezing, for a command that stopped before);
- :func:`at_exit` (registered once): the same freeze when the process ends, so the interpreter's
  last collection skips the loaded stack. Nothing is lost by it: every file, SQLite connection,
  lock and HTTP client the commands open is closed by its ``with`` block before then, and the
  interpreter still flushes stdout and stderr itself.

Other commands (serve, relabel, eval, threads ...) get collection back at once (the root
callback calls :func:`settle` for them), so a long-running one never runs without it.
"""

from __future__ import annotations

import atexit
import gc

_state = {"paused": False, "exit_registered": False}


def pause() -> None:
    """Collection off until :func:`settle` (only if it was on: a caller's choice is kept)."""
    if gc.isenabled():
        gc.disable()
        _state["paused"] = True


def settle() -> None:
    """Loading is done: if :func:`pause` turned collection off, freeze what exists and turn it
    back on. Later calls do nothing (a chat's later turns freeze nothing of their own)."""
    if _state["paused"]:
        _state["paused"] = False
        gc.freeze()
        gc.enable()


def unpause() -> None:
    """Collection back on if :func:`pause` turned it off and nothing settled it (a command that
    failed while loading), freezing nothing: the state an in-process caller had."""
    if _state["paused"]:
        _state["paused"] = False
        gc.enable()


def at_exit() -> None:
    """At the process's end, freeze the heap so the interpreter's final collection skips it
    (registered once, whatever the number of calls)."""
    if not _state["exit_registered"]:
        _state["exit_registered"] = True
        atexit.register(gc.freeze)
