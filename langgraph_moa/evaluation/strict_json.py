"""Strict JSON for every file an eval writes (``manifest.json``, ``items.jsonl``,
``summary.json``, ``report.json``) and for ``moa eval --json``: a number that is not finite
(a metric over no item, a ratio over no weight) becomes ``null``, and the text is written with
``allow_nan=False``, so ``jq``, JavaScript and any strict parser read it.

Python's ``json`` writes ``NaN``/``Infinity`` by default and has no option to turn them into
``null``; this is the few lines that do (no library is needed for it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite (in dicts, lists, tuples) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """Strict JSON text of ``value`` (non-finite numbers as null)."""
    return json.dumps(finite(value), allow_nan=False, **options)


def write(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` as strict, indented JSON."""
    path.write_text(dumps(value, indent=2), encoding="utf-8")
