"""Exports of a relabel run, read from its ledger (streamed: memory stays flat).

- ``sft``: OpenAI fine-tuning chat JSONL: ``{"messages": [...], "tools": [...]}`` (tools only
  when the row had them; an answer that calls tools keeps its ``tool_calls``). Only the MoA's
  answers train: each of them has ``"weight": 1``, every other assistant message of the
  conversation (the production model's earlier turns) ``"weight": 0``, OpenAI's per-message
  switch. One line per row; for a row relabeled with ``turns="all"`` and relabeled context,
  one line holding every turn's MoA answer; with original context, one line per turn (the
  earlier originals at weight 0, as that turn's prompt had them).
- ``prompt-completion``: TRL's conversational prompt-completion form, one line per turn:
  ``{"id", "prompt": [messages before], "completion": [the MoA answer]}`` (+ ``tools``, +
  ``turn`` for ``turns="all"`` runs). TRL's ``SFTTrainer`` trains only on the completion of such
  rows by default.
- ``dpo``: TRL's conversational preference JSONL, one pair per turn: ``{"prompt": [...],
  "chosen": [answer], "rejected": [other]}`` plus ``id``, ``rejected_from`` (extra fields TRL
  leaves alone), ``tools`` and ``turn`` when there are some.
  *chosen* is the MoA answer. *rejected* is the turn's original answer when it has one;
  otherwise the last layer's successful proposal sharing the fewest words with the MoA answer
  (the candidate the aggregator drew least from; ties: the later one), and ``rejected_from``
  names it (``original`` or ``proposal:<node>#<sample>``). A pair whose two sides have the
  same text is left out (``no_pair``).
- ``openai-dpo``: the same pairs in OpenAI's preference fine-tuning form: ``{"input":
  {"messages": [...], "tools": [...]}, "preferred_output": [answer], "non_preferred_output":
  [other]}`` (``tools`` only when the row had them; no other field, OpenAI's files take none).
- ``traces``: Parquet, one row per LLM call: row id, turn, node, name, model, layer, sample,
  ok, error, tokens, cost (to the micro-dollar), latency, attempts, cached.

Every export returns (and ``moa export`` prints) what it wrote and what it left out, by reason
(:data:`LEFT_OUT`): ``failed`` rows have no answer; ``truncated`` ones (the final answer was cut
by ``max_tokens``: ``"truncated"`` among the record's ``degraded_reasons``, or, in older
ledgers, the aggregator's finish reason ``length``) and ``degraded`` ones (a proposer or the
critic failed, a fallback answered, a JSON-mode answer that is not JSON) are kept out unless
``include_degraded``; ``invalid`` input rows were never run; ``rejected`` counts rows rejected
in review (none yet: there is no review store); ``no_pair`` counts the turns of the preference
formats without a distinct rejected answer. Rows are counted in rows, ``no_pair`` in turns.

Hand-written: the formats are a few lines of JSON each, and no library writes them from our
records.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from langgraph_moa.batch.feeding import round_usd
from langgraph_moa.batch.ledger import RowRecord
from langgraph_moa.errors import MoAInputError
from langgraph_moa.extras import require_extra
from langgraph_moa.spec.models import PriceTable

if TYPE_CHECKING:
    from langgraph_moa.batch.runner import RelabelRun

ExportFormat = Literal["sft", "prompt-completion", "dpo", "openai-dpo", "traces"]
FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
LEFT_OUT = ("failed", "degraded", "truncated", "invalid", "rejected", "no_pair")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the file, how many rows (lines, or calls for ``traces``) it
    holds, and how many were left out, by reason (every key of :data:`LEFT_OUT`)."""

    path: Path
    format: str
    rows: int
    left_out: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEFT_OUT, 0))
    include_degraded: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The object ``moa export --json`` prints."""
        return {
            "path": str(self.path),
            "format": self.format,
            "rows": self.rows,
            "left_out": dict(self.left_out),
        }

    def describe(self) -> str:
        """One line: what was written where, and what was left out, by reason."""
        said = f"wrote {self.rows} rows to {self.path}"
        out = {k: v for k, v in self.left_out.items() if v}
        if not out:
            return f"{said}; nothing left out"
        parts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in out.items())
        line = f"{said}; left out {sum(out.values())}: {parts}"
        if not self.include_degraded and (out.get("degraded") or out.get("truncated")):
            line += " (--include-degraded keeps them)"
        return line


@dataclass(frozen=True)
class Turn:
    """One relabeled answer of a row: the prompt it answered, the MoA's answer, the original
    answer there (if the row had one), its graph result, and its number (None for a row
    relabeled with ``turns="last"``)."""

    prompt: list[dict[str, Any]]
    answer: dict[str, Any]
    original: dict[str, Any] | None
    result: dict[str, Any]
    number: int | None
    index: int  # where the answer stands in the row's conversation


def _answer_of(message: dict[str, Any] | None, result: dict[str, Any] | None) -> dict[str, Any]:
    if message:
        return dict(message)
    return {"role": "assistant", "content": (result or {}).get("answer", "")}


def _conversation(record: RowRecord) -> list[dict[str, Any]]:
    completion = record["completion"]
    return [*record["prompt"], *([completion] if completion is not None else [])]


def _turns_of(record: RowRecord) -> list[Turn]:
    """The relabeled answers of a done row, in order (one, unless it has ``turns``)."""
    turns = record.get("turns")
    if not turns:
        return [
            Turn(
                prompt=list(record["prompt"]),
                answer=_answer_of(record.get("answer_message"), record["result"]),
                original=record["completion"],
                result=record["result"] or {},
                number=None,
                index=len(record["prompt"]),
            )
        ]
    conversation = _conversation(record)
    relabeled = record.get("turn_context", "relabeled") == "relabeled"
    answers: dict[int, dict[str, Any]] = {}
    found: list[Turn] = []
    for number, turn in enumerate(turns, 1):
        index = turn["index"]
        before = conversation[:index]
        prompt = [answers.get(k, m) for k, m in enumerate(before)] if relabeled else before
        answer = _answer_of(turn["answer_message"], turn["result"])
        answers[index] = answer
        found.append(Turn(prompt, answer, turn["completion"], turn["result"] or {}, number, index))
    return found


def _truncated(record: RowRecord) -> bool:
    if "truncated" in (record.get("degraded_reasons") or []):
        return True
    results = [t["result"] for t in record.get("turns") or []] or [record["result"]]
    return any(
        ((r or {}).get("aggregator") or {}).get("finish_reason") == "length" for r in results
    )


def _left_out_reason(record: RowRecord, include_degraded: bool) -> str | None:
    """Why an export leaves ``record`` out (a key of :data:`LEFT_OUT`), or None."""
    if record["status"] != "done":
        return "failed"
    if include_degraded:
        return None
    if _truncated(record):
        return "truncated"
    return "degraded" if record["degraded"] else None


def _weighted(message: dict[str, Any], weight: int) -> dict[str, Any]:
    return {**message, "weight": weight} if message.get("role") == "assistant" else message


def _with_tools(line: dict[str, Any], record: RowRecord) -> dict[str, Any]:
    if record["tools"]:
        line["tools"] = record["tools"]
    return line


def _sft_rows(record: RowRecord) -> Iterator[dict[str, Any]]:
    """The OpenAI chat lines of a done row: only the MoA's answers at weight 1."""
    turns = _turns_of(record)
    if record.get("turns") and record.get("turn_context", "relabeled") == "relabeled":
        answers = {t.index: t.answer for t in turns}
        last = turns[-1].index
        messages = [
            _weighted(answers[k], 1) if k in answers else _weighted(m, 0)
            for k, m in enumerate(_conversation(record)[:last])
        ]
        messages.append(_weighted(turns[-1].answer, 1))
        yield _with_tools({"messages": messages}, record)
        return
    for turn in turns:
        messages = [_weighted(m, 0) for m in turn.prompt] + [_weighted(turn.answer, 1)]
        yield _with_tools({"messages": messages}, record)


def _prompt_completion_rows(record: RowRecord) -> Iterator[dict[str, Any]]:
    """TRL's conversational prompt-completion lines of a done row, one per turn."""
    for turn in _turns_of(record):
        line: dict[str, Any] = {"id": record["id"]}
        if turn.number is not None:
            line["turn"] = turn.number
        line |= {"prompt": turn.prompt, "completion": [turn.answer]}
        yield _with_tools(line, record)


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _text(message: dict[str, Any] | None) -> str:
    if not message:
        return ""
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    calls = json.dumps(message.get("tool_calls") or [], sort_keys=True)
    return f"{content or ''}{calls if message.get('tool_calls') else ''}"


def _rejected(turn: Turn) -> tuple[dict[str, Any], str] | None:
    """The rejected side of a turn's pair and where it came from (None: no candidate)."""
    if turn.original is not None:
        return dict(turn.original), "original"
    layers = turn.result.get("layers") or []
    candidates = [p for p in (layers[-1] if layers else []) if p["ok"] and p["text"]]
    if not candidates:
        return None
    answer_words = _words(_text(turn.answer))

    def overlap(p: dict[str, Any]) -> float:
        words = _words(p["text"])
        union = words | answer_words
        return len(words & answer_words) / len(union) if union else 1.0

    worst = min(reversed(candidates), key=overlap)
    return {
        "role": "assistant",
        "content": worst["text"],
    }, f"proposal:{worst['node']}#{worst['sample']}"


def dpo_pair(record: RowRecord, turn: Turn) -> dict[str, Any] | None:
    """The TRL preference pair of a turn (None when there is no distinct rejected answer)."""
    found = _rejected(turn)
    if found is None:
        return None
    rejected, source = found
    if _text(rejected).strip() == _text(turn.answer).strip():
        return None
    line: dict[str, Any] = {"id": record["id"]}
    if turn.number is not None:
        line["turn"] = turn.number
    line |= {
        "prompt": turn.prompt,
        "chosen": [turn.answer],
        "rejected": [rejected],
        "rejected_from": source,
    }
    return _with_tools(line, record)


def _openai_dpo_row(record: RowRecord, turn: Turn) -> dict[str, Any] | None:
    """The same pair as :func:`dpo_pair`, in OpenAI's preference fine-tuning form."""
    pair = dpo_pair(record, turn)
    if pair is None:
        return None
    given: dict[str, Any] = {"messages": pair["prompt"]}
    if record["tools"]:
        given["tools"] = record["tools"]
    return {
        "input": given,
        "preferred_output": pair["chosen"],
        "non_preferred_output": pair["rejected"],
    }


def _call_rows(record: RowRecord, prices: PriceTable) -> Iterator[dict[str, Any]]:
    """One trace row per call the row made (proposals, critic, aggregator), every turn's."""
    turns = record.get("turns")
    results = (
        [(t["result"], n) for n, t in enumerate(turns, 1)] if turns else [(record["result"], None)]
    )
    for result, turn in results:
        yield from _calls_of(record["id"], turn, result or {}, prices)


def _calls_of(
    row_id: str, turn: int | None, result: dict[str, Any], prices: PriceTable
) -> Iterator[dict[str, Any]]:
    calls: list[dict[str, Any]] = [p for layer in result.get("layers") or [] for p in layer]
    for extra in (result.get("critique"), result.get("aggregator")):
        if extra:
            calls.append(extra)
    for call in calls:
        usage = call.get("usage") or {}
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        yield {
            "row_id": row_id,
            "turn": turn,
            "node": call["node"],
            "name": call["name"],
            "model": call["model"],
            "layer": call.get("layer"),
            "sample": call.get("sample"),
            "ok": bool(call["ok"]),
            "error": call.get("error"),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": usage.get("total_tokens", 0),
            "cost_usd": 0.0
            if call.get("cached")
            else round_usd(prices.cost(call["model"], prompt, completion)),
            "latency_s": float(call.get("latency_s") or 0.0),
            "attempts": int(call.get("attempts") or 0),
            "cached": bool(call.get("cached")),
        }


def _write_traces(run: RelabelRun, target: Path, left_out: dict[str, int]) -> int:
    require_extra("parquet", "the traces export")
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("row_id", pa.string()),
            ("turn", pa.int32()),
            ("node", pa.string()),
            ("name", pa.string()),
            ("model", pa.string()),
            ("layer", pa.int32()),
            ("sample", pa.int32()),
            ("ok", pa.bool_()),
            ("error", pa.string()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("total_tokens", pa.int64()),
            ("cost_usd", pa.float64()),
            ("latency_s", pa.float64()),
            ("attempts", pa.int32()),
            ("cached", pa.bool_()),
        ]
    )
    prices = PriceTable(run.manifest.resolved_topology().prices)
    count = 0
    with pq.ParquetWriter(target, schema) as writer:
        batch: list[dict[str, Any]] = []
        for record in run.records():
            calls = list(_call_rows(record, prices))
            if not calls and record["status"] != "done":
                left_out["failed"] += 1  # a failed row with no call recorded
            batch.extend(calls)
            if len(batch) >= 4096:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
                batch = []
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        count += len(batch)
    return count


def _lines(fmt: ExportFormat, record: RowRecord, left_out: dict[str, int]) -> Iterator[Any]:
    """The lines of one usable row in ``fmt``, counting its turns without a pair."""
    if fmt == "sft":
        yield from _sft_rows(record)
    elif fmt == "prompt-completion":
        yield from _prompt_completion_rows(record)
    else:
        make = dpo_pair if fmt == "dpo" else _openai_dpo_row
        for turn in _turns_of(record):
            line = make(record, turn)
            if line is None:
                left_out["no_pair"] += 1
            else:
                yield line


def export_run(
    run: RelabelRun,
    fmt: str,
    out: str | Path | None = None,
    *,
    include_degraded: bool = False,
) -> ExportResult:
    """Write ``fmt`` for ``run`` to ``out`` (default: ``<run>/<fmt>.jsonl`` or
    ``traces.parquet``) atomically; returns the path, the number of rows written and what was
    left out, by reason."""
    if fmt not in FORMATS:
        raise MoAInputError(f"unknown export format {fmt!r} ({', '.join(FORMATS)})")
    chosen: ExportFormat = fmt  # checked just above
    default = run.path / ("traces.parquet" if fmt == "traces" else f"{fmt}.jsonl")
    target = Path(out) if out is not None else default
    if target.is_dir():
        raise MoAInputError(f"{str(target)!r} is a folder; give a file name")
    tmp = target.with_name(f".{target.name}.tmp")
    left_out = dict.fromkeys(LEFT_OUT, 0)
    try:
        if chosen == "traces":
            count = _write_traces(run, tmp, left_out)
        else:
            count = 0
            with tmp.open("w", encoding="utf-8") as f:
                for record in run.records():
                    reason = _left_out_reason(record, include_degraded)
                    if reason is not None:
                        left_out[reason] += 1
                        continue
                    for line in _lines(chosen, record, left_out):
                        f.write(json.dumps(line, ensure_ascii=False) + "\n")
                        count += 1
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise MoAInputError(f"cannot write {str(target)!r}: {err.strerror}") from None
    except BaseException:  # a ledger that broke mid-read, Ctrl-C: no half file left behind
        tmp.unlink(missing_ok=True)
        raise
    left_out["invalid"] = sum(1 for _ in run.invalid_rows())
    return ExportResult(target, fmt, count, left_out, include_degraded)
