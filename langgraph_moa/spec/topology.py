"""The Topology spec: which agents propose in which layer, the optional critic and the aggregator,
and where a topology comes from (a shipped preset, a file, or data already loaded).

A topology is plain data (pydantic v2). It comes from a YAML/JSON file, a shipped preset
(``presets/*.yaml`` beside this module) or Python, and is validated strictly: unknown keys,
duplicate names, empty layers and bad types are errors that name the offending field.
This module holds the whole shape (:class:`Layer`, :class:`Topology` and its run-wide settings)
and the loading; one call site's settings are in :mod:`langgraph_moa.spec.agent`, how answers
are combined in :mod:`langgraph_moa.spec.combining`, and reading a user's file in
:mod:`langgraph_moa.spec.files`. :class:`Agent` is importable from here too.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from langgraph_moa.errors import MoAInputError
from langgraph_moa.spec.agent import RESERVED_NAMES, Agent, Retry, Strict
from langgraph_moa.spec.combining import Aggregator, EarlyStop, LayerJoin, References
from langgraph_moa.spec.files import describe_validation_error, read_data_file
from langgraph_moa.spec.providers import requests_for

# The preset used when none is named (CLI, chat model, Studio): runs offline, needs no key.
DEFAULT_PRESET = "local"

# Size limits: far above any useful MoA (the paper's largest is 3 layers of 6), low enough that a
# small file cannot expand (YAML aliases) into a graph that takes minutes and gigabytes to build.
MAX_LAYERS = 16
MAX_PROPOSERS_PER_LAYER = 64


class Budget(Strict):
    """A per-query ceiling; the run shrinks (drops the critic, then trims proposers) to fit."""

    max_usd: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _something(self) -> Budget:
        if self.max_usd is None and self.max_tokens is None:
            raise ValueError("set max_usd, max_tokens or both")
        return self


class Layer(Strict):
    """Proposers that run concurrently and all see the previous layer's answers."""

    proposers: list[Agent] = Field(min_length=1, max_length=MAX_PROPOSERS_PER_LAYER)
    deadline_s: float | None = Field(
        default=None, gt=0, description="The layer goes on with what it has after this long."
    )
    min_proposals: int = Field(
        default=1, ge=1, description="Quorum: fewer successful proposals than this fail the run."
    )
    references: References | None = Field(
        default=None,
        description="How this layer's proposers see the previous layer's answers (order, "
        "dropout, outlier filter); default: all of them, in layer order.",
    )
    early_stop: EarlyStop | None = Field(
        default=None,
        description="End the layered part after this layer when its answers agree.",
    )
    join: LayerJoin | None = Field(
        default=None,
        description="What the layer passes on: all answers, the majority's (vote), the one a "
        "judge selects (select), or the judge's top k (rank).",
    )

    @property
    def size(self) -> int:
        """Proposals the layer makes when nothing fails (an agent with n gives n)."""
        return sum(a.n for a in self.proposers)

    @property
    def passes_on(self) -> int:
        """Answers the layer passes on when nothing fails or ties."""
        return self.join.passes_on(self.size) if self.join is not None else self.size

    @model_validator(mode="after")
    def _name_proposers(self) -> Layer:
        if self.join is not None and self.join.keep is not None and self.join.keep > self.size:
            raise ValueError(
                f"join.keep: {self.join.keep} is more than the layer's {self.size} answers"
            )
        if self.min_proposals > self.size:
            raise ValueError(
                f"min_proposals ({self.min_proposals}) is above the layer's size ({self.size})"
            )
        explicit = [a.name for a in self.proposers if a.name]
        seen: set[str] = set(RESERVED_NAMES)  # a derived name steps around them too
        for name in explicit:
            if name in seen:
                raise ValueError(f"duplicate proposer name {name!r} in this layer")
            seen.add(name)
        named: list[Agent] = []
        for agent in self.proposers:
            if agent.name is None:
                agent = agent.model_copy(update={"name": _unique(_derive_name(agent), seen)})
                seen.add(agent.name or "")
            named.append(agent)
        object.__setattr__(self, "proposers", named)
        return self


class Price(Strict):
    """USD per million tokens, online; and through the provider's Batch API, when that differs
    from the default (half the online price for providers with a batch tier)."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    batch_input_per_mtok: float | None = Field(default=None, ge=0)
    batch_output_per_mtok: float | None = Field(default=None, ge=0)


class Topology(Strict):
    """A whole Mixture-of-Agents: proposer layers, an optional critic, one aggregator."""

    name: str = Field(default="moa", min_length=1, max_length=100)
    description: str = Field(default="", max_length=2000)
    layers: list[Layer] = Field(min_length=1, max_length=MAX_LAYERS)
    critic: Agent | None = None
    aggregator: Aggregator
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description='Extra or overriding prices, keyed by "provider:model".',
    )
    retry: Retry = Field(default_factory=Retry, description="Default retry for every agent.")
    timeout_s: float = Field(default=120.0, gt=0, description="Default per-request timeout.")
    deadline_s: float | None = Field(
        default=None,
        gt=0,
        description="The whole run's deadline: past it the run is cancelled and fails, keeping "
        "what finished (a durable thread can be resumed).",
    )
    fallback: Literal["fail", "best_proposal"] | Agent = Field(
        default="fail",
        description="If the aggregator fails: fail the run, answer with the best proposal, or "
        "ask this fallback agent.",
    )
    budget: Budget | None = None
    review: Literal["none", "before_aggregate"] = Field(
        default="none",
        description="before_aggregate: pause for a person to approve, edit or drop the "
        "candidates before the aggregator runs.",
    )
    cache_sampled: bool = Field(
        default=False,
        description="Also cache calls sampled at temperature > 0 without a seed.",
    )

    @field_validator("name", "description")
    @classmethod
    def _printable(cls, value: str) -> str:
        # shown on terminals and in HTTP responses: no control characters (ANSI escapes)
        if not value.replace("\n", " ").isprintable():
            raise ValueError("must be printable text (no control characters)")
        return value

    @model_validator(mode="after")
    def _complete_agents(self) -> Topology:
        """Name the critic/aggregator/fallback; give every agent its effective retry/timeout."""

        def complete(agent: Agent, name: str | None = None) -> Agent:
            update: dict[str, Any] = {}
            if agent.name is None and name:
                update["name"] = name
            if agent.retry is None:
                update["retry"] = self.retry
            if agent.timeout_s is None:
                update["timeout_s"] = self.timeout_s
            return agent.model_copy(update=update) if update else agent

        layers = [
            layer.model_copy(update={"proposers": [complete(a) for a in layer.proposers]})
            for layer in self.layers
        ]
        object.__setattr__(self, "layers", layers)
        for field in ("critic", "aggregator", "fallback"):
            agent = getattr(self, field)
            if isinstance(agent, Agent):
                object.__setattr__(self, field, complete(agent, field))
        return self

    @field_validator("aggregator", mode="before")
    @classmethod
    def _plain_agent(cls, value: Any) -> Any:
        """An ``Agent`` given as the aggregator synthesizes, as it always did."""
        if isinstance(value, Agent) and not isinstance(value, Aggregator):
            return value.model_dump(exclude_unset=True)
        return value

    @model_validator(mode="after")
    def _modes_fit(self) -> Topology:
        """Early stops and aggregator modes that fit the layers they apply to."""
        last = self.layers[-1]
        if last.early_stop is not None:
            raise ValueError(
                f"layers.{len(self.layers) - 1}.early_stop: the last layer has no later layer "
                "to skip (early_stop belongs on an earlier layer)"
            )
        agg = self.aggregator
        if agg.fuse is not None and agg.fuse > last.passes_on:
            given = (
                f"the last layer's {last.size} candidates"
                if last.passes_on == last.size
                else f"the {last.passes_on} candidate(s) the last layer's join passes on"
            )
            raise ValueError(f"aggregator.fuse: {agg.fuse} is more than {given}")
        if not agg.model:  # vote without a model: a tie's synthesis uses the last layer's
            object.__setattr__(
                self, "aggregator", agg.model_copy(update={"model": last.proposers[0].model})
            )
        return self

    def join_agent(self, number: int) -> Agent | None:
        """The judge of layer ``number``'s join (1-based) when it calls a model (select, rank),
        as an agent named ``L<i>-<mode>`` with the topology's retry and timeout."""
        join = self.layers[number - 1].join
        if join is None or not join.calls_model or join.model is None:
            return None
        return Agent(
            name=f"L{number}-{join.mode}",
            model=join.model,
            temperature=join.temperature,
            max_tokens=join.max_tokens,
            retry=self.retry,
            timeout_s=self.timeout_s,
        )

    def agents(self) -> list[Agent]:
        """Every agent, in the order the graph may call them (the fallback agent last)."""
        found: list[Agent] = []
        for number, layer in enumerate(self.layers, 1):
            found += layer.proposers
            if (judge := self.join_agent(number)) is not None:
                found.append(judge)
        if self.critic:
            found.append(self.critic)
        found.append(self.aggregator)
        if isinstance(self.fallback, Agent):
            found.append(self.fallback)
        return found

    def calls_per_query(self) -> int:
        """LLM requests one query makes when nothing fails (``n`` > 1 is one request where the
        provider accepts ``n``, else n requests)."""
        proposers = [a for layer in self.layers for a in layer.proposers]
        if self.critic:
            proposers.append(self.critic)
        joins = sum(
            layer.join.requests_for(layer.size) for layer in self.layers if layer.join is not None
        )
        return (
            sum(requests_for(a) for a in proposers)
            + joins
            + self.aggregator.requests_for(self.layers[-1].passes_on)
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Topology:
        return load_topology(path)


def _derive_name(agent: Agent) -> str:
    tail = agent.model_name.rstrip("/").rsplit("/", 1)[-1]
    if tail.endswith(".gguf"):
        tail = tail[: -len(".gguf")]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-._")
    return cleaned or agent.provider


def _unique(base: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    k = 2
    while f"{base}-{k}" in taken:
        k += 1
    return f"{base}-{k}"


def _check_size(data: dict[str, Any], source: str) -> None:
    """Refuse an oversized topology before validating it (validation is the slow part)."""
    layers = data.get("layers")
    if not isinstance(layers, list):
        return  # validation says what is wrong
    if len(layers) > MAX_LAYERS:
        raise MoAInputError(f"{source}: {len(layers)} layers, more than the limit of {MAX_LAYERS}")
    for number, layer in enumerate(layers, 1):
        proposers = layer.get("proposers") if isinstance(layer, dict) else None
        if isinstance(proposers, list) and len(proposers) > MAX_PROPOSERS_PER_LAYER:
            raise MoAInputError(
                f"{source}: layer {number} has {len(proposers)} proposers, more than the limit "
                f"of {MAX_PROPOSERS_PER_LAYER}"
            )


def parse_topology(data: Any, *, source: str = "topology") -> Topology:
    """Validate already-loaded data; raise MoAInputError with a one-line reason."""
    if not isinstance(data, dict):
        raise MoAInputError(f"{source}: expected a mapping at the top level")
    _check_size(data, source)
    try:
        return Topology.model_validate(data)
    except ValidationError as err:
        raise MoAInputError(f"invalid {source}: {describe_validation_error(err)}") from None


def load_topology(path: str | Path) -> Topology:
    """Read a topology from a .yaml/.yml/.json file."""
    data = read_data_file(path, what="topology file")
    return parse_topology(data, source=f"topology file {str(path)!r}")


def _preset_files() -> dict[str, Any]:
    folder = resources.files("langgraph_moa.spec") / "presets"
    return {f.name.rsplit(".", 1)[0]: f for f in folder.iterdir() if f.name.endswith(".yaml")}


@cache
def _load_preset_cached(name: str) -> Topology:
    files = _preset_files()
    return parse_topology(yaml.safe_load(files[name].read_text(encoding="utf-8")), source=name)


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description, sorted by name."""
    return {name: load_preset(name).description for name in sorted(_preset_files())}


def load_preset(name: str) -> Topology:
    """A shipped preset by name (``moa``, ``moa-lite``, ``moa-gpt4o``, ``self-moa``, ...)."""
    if name not in _preset_files():
        known = ", ".join(sorted(_preset_files()))
        raise MoAInputError(f"unknown preset {name!r}; known presets: {known}")
    return _load_preset_cached(name)


def resolve_topology(*, preset: str | None = None, path: str | Path | None = None) -> Topology:
    """The topology a user named: a shipped preset or a topology file (never both), else
    :data:`DEFAULT_PRESET`. The one place every door turns its ``--preset``/``--topology``
    options (or a Python caller's name or path) into a :class:`Topology`."""
    if preset and path:
        raise MoAInputError("give either --preset or --topology, not both")
    if path:
        return load_topology(path)
    return load_preset(preset or DEFAULT_PRESET)
