"""Candidate hygiene: which earlier answers a call sees, and in what order.

Answers are shown numbered and without model names. A ``references`` setting adds, per call:
an outlier filter (answers lexically far from the others are left out), dropout (each answer
left out with some chance, one always kept) and a shuffled order; the call's record maps the
shown positions back to the proposals.

Lexical similarity is word-set overlap (Jaccard) computed here: no model, no network, and a
dozen lines, so no library is pulled in for it.
"""

from __future__ import annotations

import random
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

from langgraph_moa.nodes.state import MoAState, Proposal, ReferencesRecord
from langgraph_moa.spec.combining import References

_WORD_RE = re.compile(r"\w+")


def _words(text: str) -> frozenset[str]:
    return frozenset(w.lower() for w in _WORD_RE.findall(text))


def similarity(a: str, b: str) -> float:
    """Word-set overlap of two texts: 1.0 same words, 0.0 none shared."""
    wa, wb = _words(a), _words(b)
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


def mean_similarity(texts: Sequence[str]) -> float:
    """The mean similarity over every pair (1.0 for fewer than two texts)."""
    pairs = [similarity(a, b) for a, b in combinations(texts, 2)]
    return sum(pairs) / len(pairs) if pairs else 1.0


def outliers(texts: Sequence[str], ratio: float) -> list[int]:
    """Positions of texts whose mean similarity to the others is below ``ratio`` times the
    median text's. Needs three texts to tell; never leaves out half of them or more."""
    if len(texts) < 3:
        return []
    means = [
        sum(similarity(t, u) for j, u in enumerate(texts) if j != i) / (len(texts) - 1)
        for i, t in enumerate(texts)
    ]
    median = statistics.median(means)
    far = sorted((k for k, m in enumerate(means) if m < ratio * median), key=lambda k: means[k])
    return sorted(far[: (len(texts) - 1) // 2])


def proposal_ref(p: Proposal, proposals: Sequence[Proposal]) -> str:
    """``L2/qwen72``, or ``L2/qwen72#2`` when that node made several samples."""
    several = sum(1 for q in proposals if q["node"] == p["node"]) > 1
    return f"{p['node']}#{p['sample'] + 1}" if several else p["node"]


def answer_layer(state: MoAState, last: int) -> int:
    """The layer whose answers the final steps work from: ``last``, or the layer that ended
    the layered part early."""
    for check in state.get("early_stop") or []:
        if check["stopped"]:
            return check["layer"]
    return last


def candidates(state: MoAState, layer: int) -> list[Proposal]:
    """The successful proposals of ``layer`` (1-based) with text, in layer order; of those,
    only what the layer's join passed on, in the order it passed them (a rank join: best
    first), when it has a ``join`` setting."""
    layers = state.get("layers") or []
    if layer < 1 or layer > len(layers):
        return []
    everyone = layers[layer - 1]
    answered = [p for p in everyone if p["ok"] and p["text"]]
    for join in state.get("joins") or []:  # a layer that passes on only some of its answers
        if join["layer"] == layer:
            by_name = {proposal_ref(p, everyone): p for p in answered}
            return [by_name[name] for name in join["passed"] if name in by_name]
    return answered


def refs_of(state: MoAState, layer: int, chosen: Sequence[Proposal]) -> list[str]:
    """The names (``L1/a``, ``L1/a#2``) of ``chosen`` proposals of ``layer``."""
    layers = state.get("layers") or []
    everyone = layers[layer - 1] if 1 <= layer <= len(layers) else list(chosen)
    return [proposal_ref(p, everyone) for p in chosen]


@dataclass
class Arrangement:
    shown: list[Proposal]  # in the order the model sees them
    record: ReferencesRecord | None  # None without a references setting

    @property
    def texts(self) -> list[str]:
        return [p["text"] or "" for p in self.shown]


class Arranger:
    """Arranges one call site's references by its ``references`` setting (None: all of them,
    in layer order). Each call site has its own random stream, seeded by the setting's seed
    and its node name when a seed is given."""

    def __init__(self, setting: References | None, node: str) -> None:
        self.setting = setting
        seed = None if setting is None or setting.seed is None else f"{setting.seed}:{node}"
        self.random = random.Random(seed)

    def keep(self, state: MoAState, layer: int) -> tuple[list[Proposal], ReferencesRecord | None]:
        """The candidates of ``layer`` left after the outlier filter and dropout, in layer
        order (what a vote counts)."""
        pool = candidates(state, layer)
        setting = self.setting
        if setting is None:
            return pool, None
        names = dict(zip(map(id, pool), refs_of(state, layer, pool), strict=True))
        filtered: list[Proposal] = []
        if setting.filter == "outliers":
            far = set(outliers([p["text"] or "" for p in pool], setting.outlier_ratio))
            filtered = [p for k, p in enumerate(pool) if k in far]
            pool = [p for k, p in enumerate(pool) if k not in far]
        dropped: list[Proposal] = []
        if setting.dropout > 0 and pool:
            draws = [self.random.random() for _ in pool]
            kept = [p for p, d in zip(pool, draws, strict=True) if d >= setting.dropout]
            if not kept:  # one is always kept: the one the draw was least keen to drop
                kept = [pool[max(range(len(pool)), key=draws.__getitem__)]]
            dropped = [p for p in pool if all(p is not k for k in kept)]
            pool = kept
        record = ReferencesRecord(
            shown=[names[id(p)] for p in pool],
            filtered=[names[id(p)] for p in filtered],
            dropped=[names[id(p)] for p in dropped],
        )
        return pool, record

    def order(self, count: int) -> list[int]:
        """The order to show ``count`` items in: shuffled with ``order: shuffle``, else as is."""
        order = list(range(count))
        if self.setting is not None and self.setting.order == "shuffle":
            self.random.shuffle(order)
        return order

    def arrange(self, state: MoAState, layer: int) -> Arrangement:
        """The references one call sees: kept candidates, shuffled with ``order: shuffle``."""
        pool, record = self.keep(state, layer)
        if self.setting is None or record is None:
            return Arrangement(pool, None)
        order = self.order(len(pool))
        pool = [pool[k] for k in order]
        record["shown"] = [record["shown"][k] for k in order]
        return Arrangement(pool, record)
