"""Datasets as the unit of work: relabel a dataset with a MoA topology, resumable to the row and
to the call, and export the result for fine-tuning (SFT, TRL prompt-completion, DPO in TRL's or
OpenAI's form) or analysis (traces).

    from langgraph_moa.batch import relabel

    run = relabel("logs.jsonl", topology="openpipe", out="runs", concurrency=32)
    print(run.totals, run.cost_usd)
    written = run.export("sft")  # .path, .rows, .left_out (by reason)

Modules: ``rows`` (reading input files), ``row_check`` (a row and its checks), ``rundir`` (run
folder and manifest), ``ledger`` (SQLite record of rows), ``limits`` (rate limits), ``one_row``
(one row through the graph), ``feeding`` (the loop that feeds rows within concurrency and
budget), ``runner`` (the API), ``ray_engine`` and ``ray_stages`` (a run on Ray Data: the
driver's side, and what runs on the cluster), ``exports``.
"""

from typing import TYPE_CHECKING

from langgraph_moa.faces import lazy_face

if TYPE_CHECKING:
    from langgraph_moa.batch.exports import ExportFormat, ExportResult
    from langgraph_moa.batch.feeding import SessionProgress
    from langgraph_moa.batch.ledger import RowRecord
    from langgraph_moa.batch.limits import RateLimits, parse_limits
    from langgraph_moa.batch.runner import (
        RelabelRun,
        WorstCaseEstimate,
        arelabel,
        estimate_relabel,
        relabel,
    )

# What a user imports: the run and its estimate, the options' types, what the callbacks receive
# (on_record, on_progress) and what an export returns. The rest is the package's own.
__all__ = [
    "ExportFormat",
    "ExportResult",
    "RateLimits",
    "RelabelRun",
    "RowRecord",
    "SessionProgress",
    "WorstCaseEstimate",
    "arelabel",
    "estimate_relabel",
    "parse_limits",
    "relabel",
]

# Loaded on first use (langgraph_moa/faces.py): importing one module of the package (the CLI
# does, before it checks its arguments) must not load the whole stack behind the face.
_HOME = {
    **dict.fromkeys(["ExportFormat", "ExportResult"], "langgraph_moa.batch.exports"),
    "SessionProgress": "langgraph_moa.batch.feeding",
    "RowRecord": "langgraph_moa.batch.ledger",
    **dict.fromkeys(["RateLimits", "parse_limits"], "langgraph_moa.batch.limits"),
    **dict.fromkeys(
        ["RelabelRun", "WorstCaseEstimate", "arelabel", "estimate_relabel", "relabel"],
        "langgraph_moa.batch.runner",
    ),
}

__getattr__, __dir__ = lazy_face(__name__, _HOME, __all__)
