"""How a topology combines answers: how references are shown (:class:`References`), when a
layer stops the layered part early (:class:`EarlyStop`), what a layer passes on
(:class:`LayerJoin`) and the final step's mode (:class:`Aggregator`).

Part of the topology spec (:mod:`langgraph_moa.spec.topology` holds the whole shape).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from langgraph_moa.spec.agent import Agent, Strict

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


class _RetriesJudge(Strict):
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


class References(Strict):
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


class EarlyStop(Strict):
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
