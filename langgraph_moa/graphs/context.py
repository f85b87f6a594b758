"""Run context for the server's configurable graph, and how its topology is chosen.

The LangGraph server rebuilds a factory graph each time it reads, updates or runs a thread, and
every rebuild must produce the same nodes. So the topology is taken from the assistant's config
(``config["configurable"]``, which the server keeps in step with the assistant's ``context``), never
from per-run input. ``Context`` exists so Studio can show and edit those two settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import RunnableConfig

from langgraph_moa.errors import MoAInputError
from langgraph_moa.spec.topology import DEFAULT_PRESET, Topology, load_preset, parse_topology


@dataclass(kw_only=True)
class Context:
    """Which Mixture-of-Agents an assistant runs: a shipped preset, or a topology of its own."""

    preset: str = field(
        default=DEFAULT_PRESET,
        metadata={
            "description": "Name of a shipped preset (local, moa, moa-lite, moa-gpt4o, self-moa, "
            "openpipe, vote, usc, rank-fuse). Used only when no topology is given."
        },
    )
    topology: dict[str, Any] | None = field(
        default=None,
        metadata={
            "description": "A topology spec shaped like the YAML topology files: layers (each "
            "with proposers), optional critic, aggregator, and optional retry, timeout_s, "
            "fallback, budget, prices. Takes precedence over preset."
        },
    )


def topology_from_config(config: RunnableConfig | Mapping[str, Any] | None) -> Topology:
    """The topology an assistant's config asks for.

    Reads ``topology`` (a mapping, or the same as a JSON string) and ``preset`` from
    ``config["configurable"]``; a topology wins over a preset, and with neither the ``local``
    preset is used. Raises MoAInputError (a ValueError) naming what is wrong.
    """
    configurable: Mapping[str, Any] = (config or {}).get("configurable") or {}
    spec = configurable.get("topology")
    if isinstance(spec, str):
        try:
            spec = json.loads(spec) if spec.strip() else None
        except json.JSONDecodeError as err:
            raise MoAInputError(f"configurable.topology is not valid JSON: {err}") from None
    if spec:
        return parse_topology(spec, source="configurable.topology")
    preset = configurable.get("preset") or DEFAULT_PRESET
    if not isinstance(preset, str):
        raise MoAInputError(f"configurable.preset must be a string, got {type(preset).__name__}")
    return load_preset(preset)
