"""``moa graph`` and ``moa presets``: the graph a topology runs, drawn; the shipped presets."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from langgraph_moa.cli.options import PresetOpt, TopologyOpt, fail
from langgraph_moa.extras import require_extra
from langgraph_moa.spec.topology import list_presets, resolve_topology


class _GraphFormat(enum.StrEnum):
    mermaid = "mermaid"
    ascii = "ascii"
    svg = "svg"
    html = "html"


def graph(
    preset: PresetOpt = None,
    topology: TopologyOpt = None,
    fmt: Annotated[
        _GraphFormat | None,
        typer.Option("--format", "-f", help="mermaid (default), ascii, svg or html."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (.svg or .html: drawn offline)."),
    ] = None,
) -> None:
    """Print or draw the graph that runs for a topology (the same one Studio draws)."""
    from langgraph_moa.cli.console import err
    from langgraph_moa.cli.drawing import to_html, to_svg, write_drawing
    from langgraph_moa.graphs.builder import build_graph

    topo = resolve_topology(preset=preset, path=topology)
    compiled = build_graph(topo)
    if output is not None and fmt is None:
        write_drawing(compiled, topo, output)
        err.print(f"wrote {output}")
        return
    kind = fmt.value if fmt else "mermaid"
    drawable = compiled.get_graph()
    renderers = {
        "mermaid": drawable.draw_mermaid,
        "ascii": lambda: _ascii(drawable),
        "svg": lambda: to_svg(compiled, topo),
        "html": lambda: to_html(compiled, topo),
    }
    text = renderers[kind]()
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        fail(f"cannot write {str(output)!r}: {e.strerror}")
    err.print(f"wrote {output}")


def _ascii(drawable: Any) -> str:
    require_extra("draw", "moa graph --format ascii")
    return str(drawable.draw_ascii()) + "\n"


def presets() -> None:
    """List the shipped presets."""
    found = list_presets()
    width = max(len(name) for name in found)
    for name, description in found.items():
        sys.stdout.write(f"{name.ljust(width)}  {description}\n")
