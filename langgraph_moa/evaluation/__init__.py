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
"""
