"""The Topology spec: which agents propose in which layer, the optional critic and the aggregator.

A topology is plain data (pydantic v2). It comes from a YAML/JSON file, a shipped preset
(``presets/*.yaml`` beside this module) or Python, and is validated strictly: unknown keys,
duplicate names, empty layers and bad types are errors that name the offending field.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from langgraph_moa.errors import MoAInputError
from langgraph_moa.spec.files import read_text_file
from langgraph_moa.spec.providers import known_providers, provider_kind, requests_for

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MODEL_RE = re.compile(r"^[a-z][a-z0-9_-]*:.+$")

# The preset used when none is named (CLI, chat model, Studio): runs offline, needs no key.
DEFAULT_PRESET = "local"

# Names a proposer cannot take: each layer's own join node is "L<i>/join", and a join that asks
# a model has a node "L<i>/select" or "L<i>/rank" after it.
_RESERVED_NAMES = frozenset({"join", "select", "rank"})
# Size limits: far above any useful MoA (the paper's largest is 3 layers of 6), low enough that a
# small file cannot expand (YAML aliases) into a graph that takes minutes and gigabytes to build.
_MAX_LAYERS = 16
_MAX_PROPOSERS_PER_LAYER = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _RetriesJudge(_Strict):
    """A judge's setting ``retry_no_verdict``, left out of dumps while off: a topology written
    before the setting existed dumps as it did, so its run folders, stored threads and cached
    judgments still match."""

    retry_no_verdict: bool = Field(
        default=False,
        description="select/rank: ask the judge once more when its reply ends in no verdict "
        "(no valid [[...]] line); both replies are recorded. A topology judging an eval "
        "(--judge-topology) is asked once more when its answer has no verdict.",
    )

    @model_serializer(mode="wrap")
    def _leave_out_off(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict) and not self.retry_no_verdict:
            data.pop("retry_no_verdict", None)
        return data


class Retry(_Strict):
    """Retries of one call on 429, 5xx, timeouts and connection errors (never on other 4xx):
    exponential backoff from ``initial_s`` doubling up to ``max_s``, with jitter; a server's
    Retry-After wins."""

    attempts: int = Field(default=3, ge=1, le=20, description="Tries in all, the first included.")
    initial_s: float = Field(default=0.5, gt=0, le=600)
    max_s: float = Field(default=8.0, gt=0, le=600)

    @model_validator(mode="after")
    def _ordered(self) -> Retry:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be at least initial_s ({self.initial_s})")
        return self


class Budget(_Strict):
    """A per-query ceiling; the run shrinks (drops the critic, then trims proposers) to fit."""

    max_usd: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _something(self) -> Budget:
        if self.max_usd is None and self.max_tokens is None:
            raise ValueError("set max_usd, max_tokens or both")
        return self


class Agent(_Strict):
    """One LLM call site: a proposer, the critic or the aggregator."""

    name: str | None = Field(
        default=None,
        description="Node-friendly name; derived from the model (and made unique) when absent.",
    )
    model: str = Field(
        description='"provider:model", e.g. "openai:gpt-4o-mini" or "local:smollm2".'
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, gt=0)
    system_prompt: str | None = Field(
        default=None, description="A role for this agent, placed first in its system message."
    )
    n: int = Field(default=1, ge=1, le=16, description="How many samples to draw from this agent.")
    seed: int | None = Field(default=None, description="Sampling seed, where the provider has one.")
    timeout_s: float | None = Field(
        default=None, gt=0, description="Per-request timeout; default: the topology's timeout_s."
    )
    retry: Retry | None = Field(default=None, description="Default: the topology's retry.")
    context_window: int | None = Field(
        default=None, gt=0, description="Tokens the model accepts; known models have a default."
    )

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        if not _MODEL_RE.match(value) or not value.isprintable():
            raise ValueError(
                f'model must look like "provider:model" (e.g. "openai:gpt-4o"), got {value!r}'
            )
        if provider_kind(value) is None:
            provider = value.split(":", 1)[0]
            raise ValueError(f"unknown provider {provider!r}; known: {known_providers()}")
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError(
                "name may hold only letters, digits, '.', '_' and '-', and must start with a "
                f"letter or digit; got {value!r}"
            )
        if value in _RESERVED_NAMES:
            raise ValueError(f"name {value!r} is reserved (each layer has a node L<i>/{value})")
        return value

    @property
    def provider(self) -> str:
        return self.model.split(":", 1)[0]

    @property
    def model_name(self) -> str:
        return self.model.split(":", 1)[1]


# --- how candidates are combined (helper "modes") -------------------------------------------

_Mode = Literal["synthesize", "vote", "select", "rank", "self-moa-seq"]
_Extractor = Literal["number", "choice", "regex", "last_line"]
_Rule = Literal["synthesize", "first"]
MODES: tuple[str, ...] = ("synthesize", "vote", "select", "rank", "self-moa-seq")


def _check_extractor(extract: str | None, pattern: str | None, *, what: str) -> None:
    """An extractor that can apply: named, and a compilable regex (one group at most) if regex."""
    if extract is None:
        raise ValueError(
            f"{what} needs extract: one of number, choice, regex (with pattern), last_line"
        )
    if extract == "regex":
        if not pattern:
            raise ValueError("extract 'regex' needs a pattern")
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"pattern is not a valid regular expression: {err}") from None
        if compiled.groups > 1:
            raise ValueError("pattern may have at most one capturing group (the answer)")
    elif pattern is not None:
        raise ValueError(f"pattern applies only to extract 'regex', not {extract!r}")


class References(_Strict):
    """How earlier answers are shown to a model: their order, dropout and an outlier filter.

    References never carry model names; with ``order: shuffle`` each call sees them in a fresh
    random order, and the call's record maps the shown positions back to the proposals.
    """

    order: Literal["fixed", "shuffle"] = Field(
        default="fixed", description="fixed: layer order; shuffle: a new order for every call."
    )
    dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Chance that each reference is left out of a call (one is always kept).",
    )
    filter: Literal["none", "outliers"] = Field(
        default="none",
        description="outliers: drop answers lexically far from the others before anything else.",
    )
    outlier_ratio: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="An answer is an outlier when its mean word overlap with the others is "
        "below this fraction of the median answer's.",
    )
    seed: int | None = Field(default=None, description="Seed for order and dropout draws.")


class EarlyStop(_Strict):
    """Skip the remaining layers when this layer's answers agree (adaptive depth)."""

    agreement: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Stop when at least this share of the answers extract to the same answer.",
    )
    extract: _Extractor | None = None
    pattern: str | None = Field(default=None, description="The regex of extract: regex.")
    similarity: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Stop when the answers' mean pairwise word overlap (0-1) is at least this.",
    )

    @model_validator(mode="after")
    def _one_test(self) -> EarlyStop:
        if (self.agreement is None) == (self.similarity is None):
            raise ValueError("set exactly one of agreement (with extract) or similarity")
        if self.agreement is not None:
            _check_extractor(self.extract, self.pattern, what="agreement")
        elif self.extract is not None or self.pattern is not None:
            raise ValueError("extract applies only to agreement, not similarity")
        return self


_JoinMode = Literal["all", "vote", "select", "rank"]
# join modes that call a model (the judge), in a node of their own after the layer's join
JUDGED_JOINS: tuple[str, ...] = ("select", "rank")


class LayerJoin(_RetriesJudge):
    """What a layer passes on to the next layer (or to the final steps, after the last layer).

    - ``all`` (default): every answer;
    - ``vote``: only the answers giving the majority answer by an extractor (no model call; a
      tie, or no readable answer, passes all on);
    - ``select``: a model (the judge) names the most consistent answer, which alone goes on
      (Universal Self-Consistency between layers);
    - ``rank``: the judge ranks the answers (``judge: listwise``, or ``pairwise`` in both
      orders) and the top ``keep`` go on, best first.

    A layer has no ``fuse``: the next layer's proposers (or the aggregator) already write from
    what they are shown, so ``rank`` with ``keep: k`` is the layer's way to fuse the top k.
    """

    mode: _JoinMode = "all"
    extract: _Extractor | None = Field(default=None, description="vote: how to read an answer.")
    pattern: str | None = Field(default=None, description="The regex of extract: regex.")
    model: str | None = Field(default=None, description='select/rank: the judge, "provider:model".')
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="select/rank: the judge's.")
    max_tokens: int = Field(default=256, gt=0, description="select/rank: the judge's reply limit.")
    judge: Literal["listwise", "pairwise"] = Field(
        default="listwise",
        description="rank: one call ranking all, or every pair judged in both orders.",
    )
    keep: int | None = Field(
        default=None, ge=1, description="rank: how many of the best answers go on (default 1)."
    )
    on_no_answer: Literal["all", "first"] = Field(
        default="all",
        description="select: when the judge fails or names no answer, pass all on, or the first.",
    )
    references: References | None = Field(
        default=None,
        description="select/rank: how the judge is shown the answers (order, outlier filter).",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_fuse(cls, data: Any) -> Any:
        if isinstance(data, dict) and "fuse" in data:
            raise ValueError(
                "fuse belongs to the aggregator; a layer's rank join takes keep: k (the next "
                "layer writes from the k it is shown)"
            )
        return data

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str | None) -> str | None:
        return None if value is None else Agent._check_model(value)

    @model_validator(mode="after")
    def _mode_fields(self) -> LayerJoin:
        mode = self.mode
        if mode == "vote":
            _check_extractor(self.extract, self.pattern, what="join mode 'vote'")
        elif self.extract is not None or self.pattern is not None:
            raise ValueError(f"extract applies only to join mode 'vote', not {mode!r}")
        if mode in JUDGED_JOINS and self.model is None:
            raise ValueError(
                f'join mode {mode!r} needs a model (the judge), e.g. model: "openai:gpt-4o"'
            )
        # a setting of another mode is an error; its default is not (a stored topology is read
        # back with every field written out)
        defaults = {name: field.default for name, field in LayerJoin.model_fields.items()}
        changed = {name for name in defaults if getattr(self, name) != defaults[name]}
        owners = {
            "model": JUDGED_JOINS,
            "references": JUDGED_JOINS,
            "temperature": JUDGED_JOINS,
            "max_tokens": JUDGED_JOINS,
            "judge": ("rank",),
            "keep": ("rank",),
            "on_no_answer": ("select",),
            "retry_no_verdict": JUDGED_JOINS,
        }
        for name, modes in owners.items():
            if name in changed and mode not in modes:
                where = (
                    "join modes select and rank" if len(modes) > 1 else f"join mode {modes[0]!r}"
                )
                raise ValueError(f"{name} applies only to {where}, not {mode!r}")
        return self

    @property
    def calls_model(self) -> bool:
        return self.mode in JUDGED_JOINS

    def passes_on(self, size: int) -> int:
        """How many answers go on from a layer of ``size`` when nothing fails or ties (a vote
        may pass on all of them)."""
        if self.mode == "select":
            return min(size, 1)
        if self.mode == "rank":
            return min(size, self.keep or 1)
        return size

    def requests_for(self, size: int) -> int:
        """Judge requests for a layer of ``size`` answers when nothing fails."""
        if self.mode not in JUDGED_JOINS or size < 2:
            return 0
        if self.mode == "rank" and self.judge == "pairwise":
            return size * (size - 1)
        return 1


class Aggregator(Agent, _RetriesJudge):
    """The final step: an agent, and the mode it combines the last layer's candidates in.

    - ``synthesize`` (default): the model writes one answer from all candidates;
    - ``vote``: an answer is extracted from each candidate and the majority candidate is the
      answer, verbatim, with no model call (ties and no-answer follow ``on_tie``/``on_no_answer``);
    - ``select``: the model names the most consistent candidate (Universal Self-Consistency),
      which is the answer verbatim;
    - ``rank``: the model ranks the candidates (``judge``: listwise, or pairwise in both orders),
      then the best is the answer, or with ``fuse: k`` the top k are synthesized;
    - ``self-moa-seq``: synthesis in a sliding ``window`` over many candidates.
    """

    model: str = Field(
        default="",
        description='"provider:model"; mode vote may leave it out (ties then use the last '
        "layer's first model).",
    )
    mode: _Mode = "synthesize"
    extract: _Extractor | None = Field(default=None, description="vote: how to read an answer.")
    pattern: str | None = Field(default=None, description="The regex of extract: regex.")
    on_tie: _Rule = Field(
        default="synthesize",
        description="vote: when answers tie, synthesize the tied candidates, or take the first.",
    )
    on_no_answer: _Rule = Field(
        default="synthesize",
        description="vote/select: when no answer can be read, synthesize all, or take the first.",
    )
    judge: Literal["listwise", "pairwise"] = Field(
        default="listwise",
        description="rank: one call ranking all, or every pair judged in both orders.",
    )
    fuse: int | None = Field(
        default=None, ge=1, description="rank: synthesize the top k instead of taking the best."
    )
    window: int = Field(
        default=4, ge=2, le=64, description="self-moa-seq: candidates per synthesis step."
    )
    references: References | None = Field(
        default=None, description="How the candidates are shown: order, dropout, outliers."
    )

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        return value if value == "" else Agent._check_model(value)

    @model_validator(mode="after")
    def _mode_fields(self) -> Aggregator:
        if self.mode == "vote":
            _check_extractor(self.extract, self.pattern, what="mode 'vote'")
        elif self.extract is not None or self.pattern is not None:
            raise ValueError(f"extract applies only to mode 'vote', not {self.mode!r}")
        if self.fuse is not None and self.mode != "rank":
            raise ValueError(f"fuse applies only to mode 'rank', not {self.mode!r}")
        if not self.model and self.mode != "vote":
            raise ValueError(f"mode {self.mode!r} needs a model")
        return self

    @property
    def calls_model(self) -> bool:
        """Whether the aggregator calls its model when nothing fails and nothing ties."""
        return self.mode != "vote"

    def requests_for(self, candidates: int) -> int:
        """Requests the final step sends for ``candidates`` answers when nothing fails, ties or
        goes unread (the fallback rules may add one synthesis)."""
        if self.mode == "vote":
            return 0
        if self.mode == "select":
            return 1 if candidates > 1 else 0  # a sole candidate is chosen without a call
        if self.mode == "rank":
            judging = candidates * (candidates - 1) if self.judge == "pairwise" else 1
            return (judging if candidates > 1 else 0) + (1 if self.fuse else 0)
        if self.mode == "self-moa-seq" and candidates > self.window:
            # the first window, then window - 1 new candidates per step beside the running answer
            return 1 + -(-(candidates - self.window) // (self.window - 1))
        return 1


class Layer(_Strict):
    """Proposers that run concurrently and all see the previous layer's answers."""

    proposers: list[Agent] = Field(min_length=1, max_length=_MAX_PROPOSERS_PER_LAYER)
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
        seen: set[str] = set(_RESERVED_NAMES)  # a derived name steps around them too
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


class Price(_Strict):
    """USD per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class Topology(_Strict):
    """A whole Mixture-of-Agents: proposer layers, an optional critic, one aggregator."""

    name: str = Field(default="moa", min_length=1, max_length=100)
    description: str = Field(default="", max_length=2000)
    layers: list[Layer] = Field(min_length=1, max_length=_MAX_LAYERS)
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


def describe_validation_error(err: ValidationError) -> str:
    """Flatten a pydantic error into one line that names each offending field."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)  # the whole value: the caller names it
    return "; ".join(parts)


def _check_size(data: dict[str, Any], source: str) -> None:
    """Refuse an oversized topology before validating it (validation is the slow part)."""
    layers = data.get("layers")
    if not isinstance(layers, list):
        return  # validation says what is wrong
    if len(layers) > _MAX_LAYERS:
        raise MoAInputError(f"{source}: {len(layers)} layers, more than the limit of {_MAX_LAYERS}")
    for number, layer in enumerate(layers, 1):
        proposers = layer.get("proposers") if isinstance(layer, dict) else None
        if isinstance(proposers, list) and len(proposers) > _MAX_PROPOSERS_PER_LAYER:
            raise MoAInputError(
                f"{source}: layer {number} has {len(proposers)} proposers, more than the limit "
                f"of {_MAX_PROPOSERS_PER_LAYER}"
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


def _syntax_error(err: json.JSONDecodeError | yaml.YAMLError) -> str:
    """Where and what: ``line 3, column 7: mapping values are not allowed here``."""
    if isinstance(err, json.JSONDecodeError):
        return f"line {err.lineno}, column {err.colno}: {err.msg}"
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(problem)


def read_data_file(path: str | Path, *, what: str) -> Any:
    """Read a YAML (or ``.json``) file; MoAInputError naming ``what`` and where it is broken."""
    p = Path(path)
    kind = "JSON" if p.suffix == ".json" else "YAML"
    text = read_text_file(p, what=what)
    try:
        return json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise MoAInputError(
            f"{what} {str(p)!r} is not valid {kind}: {_syntax_error(err)}"
        ) from None
    except (RecursionError, MemoryError):
        raise MoAInputError(f"{what} {str(p)!r} is nested too deeply") from None


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
