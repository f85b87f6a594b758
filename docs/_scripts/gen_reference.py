"""Generate the reference pages at build time (mkdocs-gen-files): the CLI from the typer app,
the topology schema from the pydantic models, and the benchmark plot from bench/results/.

Generated rather than written so that neither can drift from the code: a new option or field
is in the docs the next time the site is built (``mkdocs build --strict`` runs in ``make lint``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import mkdocs_gen_files
import typer
import typer.main

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's package, whatever is installed

from langgraph_moa.cli import app  # noqa: E402
from langgraph_moa.spec.topology import Topology  # noqa: E402


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def option_rows(command: Any, ctx: typer.Context) -> list[str]:
    """One row per argument and option, as `--help` words it (flags, metavar, help, default)."""
    rows = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:  # hidden
            continue
        flags, help_text = record
        rows.append(f"| `{cell(flags)}` | {cell(help_text)} |")
    return rows


def command_section(command: Any, path: list[str], parent: typer.Context | None) -> str:
    ctx = typer.Context(command, info_name=path[-1], parent=parent)
    level = "#" * min(len(path), 3)
    title = " ".join(path)
    out = [f"{level} `{title}`", ""]
    if command.help:
        out += [command.help.strip(), ""]
    usage = " ".join(command.collect_usage_pieces(ctx))
    out += ["```text", f"{title} {usage}".rstrip(), "```", ""]
    rows = option_rows(command, ctx)
    if rows:
        out += ["| option | help |", "|---|---|", *rows, ""]
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                out.append(command_section(sub, [*path, name], ctx))
    return "\n".join(out)


def cli_page() -> str:
    root = typer.main.get_command(app)
    head = (
        "# CLI reference\n\nGenerated from the `moa` command's typer app when the site is built: "
        "every command, argument and option, with its default. `moa COMMAND --help` prints the "
        "same at a terminal.\n\n"
    )
    return head + command_section(root, ["moa"], None).replace("# `moa`", "# `moa`", 1)


def type_of(spec: dict[str, Any]) -> str:
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in spec:
        return " or ".join(type_of(s) for s in spec["anyOf"])
    if "enum" in spec:
        return " / ".join(f"`{v}`" for v in spec["enum"])
    if "const" in spec:
        return f"`{spec['const']}`"
    kind = spec.get("type", "any")
    if kind == "array":
        return f"list of {type_of(spec.get('items', {}))}"
    if kind == "object" and isinstance(spec.get("additionalProperties"), dict):
        return f"map to {type_of(spec['additionalProperties'])}"
    return str(kind)


def bounds(spec: dict[str, Any]) -> str:
    marks = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    parts = [f"{sign} {spec[key]}" for key, sign in marks.items() if key in spec]
    parts += [f"at most {spec['maxItems']} items" for _ in [1] if "maxItems" in spec]
    parts += [f"at least {spec['minItems']} items" for _ in [1] if "minItems" in spec]
    return ", ".join(parts)


def model_table(name: str, schema: dict[str, Any]) -> list[str]:
    out = [f"## {name}", ""]
    if schema.get("description"):
        out += [schema["description"].strip(), ""]
    properties = schema.get("properties", {})
    if not properties:
        return [*out, f"Type: {type_of(schema)}.", ""]
    required = set(schema.get("required", []))
    out += ["| field | type | default | bounds | description |", "|---|---|---|---|---|"]
    for field, spec in properties.items():
        default = "required" if field in required else f"`{json.dumps(spec.get('default'))}`"
        out.append(
            f"| `{field}` | {cell(type_of(spec))} | {cell(default)} | {cell(bounds(spec))} "
            f"| {cell(spec.get('description', ''))} |"
        )
    return [*out, ""]


def topology_page() -> str:
    schema = Topology.model_json_schema()
    definitions = schema.pop("$defs", {})
    out = [
        "# Topology schema",
        "",
        "Generated from the pydantic models (`Topology.model_json_schema()`) when the site is "
        "built. A topology file (YAML or JSON) is checked against exactly this: unknown keys, "
        "bad types and values out of bounds are refused with the field's path. "
        "[Concepts](../concepts.md#topology) explains the pieces; [modes](../jobs/modes.md) the "
        "aggregator and join modes.",
        "",
        *model_table("Topology", schema),
    ]
    for name in sorted(definitions):
        out += model_table(name, definitions[name])
    whole = json.dumps(Topology.model_json_schema(), indent=2)
    out += ["## The JSON Schema", "", "```json", whole, "```", ""]
    return "\n".join(out)


with mkdocs_gen_files.open("reference/cli.md", "w") as page:
    page.write(cli_page())
with mkdocs_gen_files.open("reference/topology.md", "w") as page:
    page.write(topology_page())
with mkdocs_gen_files.open("assets/modes.png", "wb") as image:
    image.write((ROOT / "bench" / "results" / "modes.png").read_bytes())
