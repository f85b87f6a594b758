"""Evaluation: run a benchmark on a topology and score it (``moa eval``), then put runs side by
side (``moa report``).

- :mod:`.datasets`: benchmarks read offline from their packages' files, and users' JSONL;
- :mod:`.prompts`, :mod:`.judge`: the judge's prompts and calls (a model or a topology);
- :mod:`.records`: finished judgments and single-model answers kept with what they cost;
- :mod:`.scoring`: exact match, verdict and grade parsing, one pair's two games combined;
- :mod:`.score`: every item of an eval scored, and per side how many were judged;
- :mod:`.stats`: bootstrap intervals, paired bootstrap, length-controlled win rate;
- :mod:`.summary`: an eval's metrics and costs;
- :mod:`.report`: the Markdown/JSON report and its plots;
- :mod:`.strict_json`: every JSON file an eval writes, with null for a number it lacks.

numpy and matplotlib come with the ``[eval]`` extra.

What a program imports to do what ``moa eval`` and ``moa report`` do: :func:`load_benchmark`,
the sides (:class:`Side` with a :class:`TopologyGenerator` or a :class:`DirectGenerator`), a
:class:`Judge` (of :func:`judge_agent` or :func:`judge_topology`), :func:`run_eval` and
:func:`write_report`. They are imported on first use (PEP 562, as at the package root), so
``from langgraph_moa.evaluation import strict_json`` does not load the benchmarks, the judge or
numpy.
"""

from typing import TYPE_CHECKING

from langgraph_moa.faces import lazy_face

if TYPE_CHECKING:
    from langgraph_moa.evaluation.datasets import load_benchmark
    from langgraph_moa.evaluation.driver import DirectGenerator, Side, TopologyGenerator, run_eval
    from langgraph_moa.evaluation.judge import Judge, judge_agent, judge_topology
    from langgraph_moa.evaluation.report import write_report

__all__ = [
    "DirectGenerator",
    "Judge",
    "Side",
    "TopologyGenerator",
    "judge_agent",
    "judge_topology",
    "load_benchmark",
    "run_eval",
    "write_report",
]

# public name -> the module that defines it
_HOME = {
    "load_benchmark": "langgraph_moa.evaluation.datasets",
    **dict.fromkeys(
        ["DirectGenerator", "Side", "TopologyGenerator", "run_eval"],
        "langgraph_moa.evaluation.driver",
    ),
    **dict.fromkeys(["Judge", "judge_agent", "judge_topology"], "langgraph_moa.evaluation.judge"),
    "write_report": "langgraph_moa.evaluation.report",
}


__getattr__, __dir__ = lazy_face(__name__, _HOME, __all__)
