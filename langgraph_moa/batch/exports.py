"""Exports of a relabel run, read from its ledger (streamed: memory stays flat).

- ``sft``: OpenAI fine-tuning chat JSONL, one line per row: ``{"messages": prompt + [the MoA
  answer], "tools": [...]}`` (tools only when the row had them; an answer that calls tools
  keeps its ``tool_calls``).
- ``dpo``: TRL's conversational preference JSONL: ``{"prompt": [...], "chosen": [answer],
  "rejected": [other]}`` plus ``id`` and ``rejected_from`` (extra fields TRL leaves alone).
  *chosen* is the MoA answer. *rejected* is the row's original completion when it has one;
  otherwise the last layer's successful proposal sharing the fewest words with the MoA answer
  (the candidate the aggregator drew least from; ties: the later one), and ``rejected_from``
  names it (``original`` or ``proposal:<node>#<sample>``). A pair whose two sides have the
  same text is left out.
- ``traces``: Parquet, one row per LLM call: row id, node, name, model, layer, sample, ok,
  error, tokens, cost (to the micro-dollar), latency, attempts, cached.

Failed rows have no answer and are never in ``sft``/``dpo``; degraded rows (a proposer or the
critic failed, a fallback answered, a JSON-mode answer that is not JSON) are left out too unless
``include_degraded``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from langgraph_moa.batch.core import round_usd
from langgraph_moa.batch.ledger import RowRecord
from langgraph_moa.errors import MoAInputError
from langgraph_moa.extras import require_extra
from langgraph_moa.spec.models import PriceTable

if TYPE_CHECKING:
    from langgraph_moa.batch.runner import RelabelRun

__all__ = ["ExportFormat", "call_rows", "dpo_pair", "export_run", "sft_row"]

ExportFormat = Literal["sft", "dpo", "traces"]
FORMATS: tuple[ExportFormat, ...] = ("sft", "dpo", "traces")


def _answer(record: RowRecord) -> dict[str, Any] | None:
    message = record.get("answer_message")
    if message:
        return dict(message)
    result = record["result"] or {}
    return {"role": "assistant", "content": result.get("answer", "")} if result else None


def _usable(record: RowRecord, include_degraded: bool) -> bool:
    return record["status"] == "done" and (include_degraded or not record["degraded"])


def sft_row(record: RowRecord) -> dict[str, Any] | None:
    answer = _answer(record)
    if answer is None:
        return None
    row: dict[str, Any] = {"messages": [*record["prompt"], answer]}
    if record["tools"]:
        row["tools"] = record["tools"]
    return row


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


def dpo_pair(record: RowRecord) -> dict[str, Any] | None:
    """The preference pair of a row (None when there is no distinct rejected answer)."""
    chosen = _answer(record)
    if chosen is None:
        return None
    if record["completion"] is not None:
        rejected, source = dict(record["completion"]), "original"
    else:
        layers = (record["result"] or {}).get("layers") or []
        candidates = [p for p in (layers[-1] if layers else []) if p["ok"] and p["text"]]
        if not candidates:
            return None
        answer_words = _words(_text(chosen))

        def overlap(p: dict[str, Any]) -> float:
            words = _words(p["text"])
            union = words | answer_words
            return len(words & answer_words) / len(union) if union else 1.0

        worst = min(reversed(candidates), key=overlap)
        rejected = {"role": "assistant", "content": worst["text"]}
        source = f"proposal:{worst['node']}#{worst['sample']}"
    if _text(rejected).strip() == _text(chosen).strip():
        return None
    return {
        "id": record["id"],
        "prompt": record["prompt"],
        "chosen": [chosen],
        "rejected": [rejected],
        "rejected_from": source,
    }


def call_rows(record: RowRecord, prices: PriceTable) -> Iterator[dict[str, Any]]:
    """One trace row per call the row made (proposals, critic, aggregator)."""
    result = record["result"] or {}
    calls: list[dict[str, Any]] = [p for layer in result.get("layers") or [] for p in layer]
    for extra in (result.get("critique"), result.get("aggregator")):
        if extra:
            calls.append(extra)
    for call in calls:
        usage = call.get("usage") or {}
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        yield {
            "row_id": record["id"],
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


def _write_traces(run: RelabelRun, target: Path) -> int:
    require_extra("parquet", "the traces export")
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("row_id", pa.string()),
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
            batch.extend(call_rows(record, prices))
            if len(batch) >= 4096:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
                batch = []
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        count += len(batch)
    return count


def export_run(
    run: RelabelRun,
    fmt: str,
    out: str | Path | None = None,
    *,
    include_degraded: bool = False,
) -> tuple[Path, int]:
    """Write ``fmt`` for ``run`` to ``out`` (default: ``<run>/<fmt>.jsonl`` or
    ``traces.parquet``) atomically; returns the path and the number of rows written."""
    if fmt not in FORMATS:
        raise MoAInputError(f"unknown export format {fmt!r} (sft, dpo or traces)")
    default = run.path / ("traces.parquet" if fmt == "traces" else f"{fmt}.jsonl")
    target = Path(out) if out is not None else default
    if target.is_dir():
        raise MoAInputError(f"{str(target)!r} is a folder; give a file name")
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        if fmt == "traces":
            count = _write_traces(run, tmp)
        else:
            make = sft_row if fmt == "sft" else dpo_pair
            count = 0
            with tmp.open("w", encoding="utf-8") as f:
                for record in run.records():
                    if not _usable(record, include_degraded):
                        continue
                    line = make(record)
                    if line is not None:
                        f.write(json.dumps(line, ensure_ascii=False) + "\n")
                        count += 1
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise MoAInputError(f"cannot write {str(target)!r}: {err.strerror}") from None
    return target, count
