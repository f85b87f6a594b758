"""The shape of the package, checked: the layer contracts of pyproject.toml (import-linter), no
import cycle between any two modules, and no module reaching another module's private names
(imported by name, or read as an attribute of an imported module); the package's users in this
repository (bench/, the docs' scripts) keep to unprefixed names too."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

PACKAGE = Path(__file__).resolve().parents[2] / "langgraph_moa"
USERS = [PACKAGE.parent / "bench", PACKAGE.parent / "docs"]


def test_import_linter_contracts_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(PACKAGE.parent / "pyproject.toml")
    code = lint_imports(config_filename=config, no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code == 0, report[-3000:]
    assert "0 broken" in report


def test_no_module_imports_itself_back() -> None:
    graph = grimp.build_graph("langgraph_moa", exclude_type_checking_imports=True)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} <-> {imported}")
    assert cycles == []


def test_no_private_name_crosses_a_module() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("langgraph_moa"):
                offenders += [
                    f"{path.relative_to(PACKAGE.parent)}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert offenders == []


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private_reaches(path: Path) -> list[str]:
    """``from langgraph_moa.m import _x``, and ``m._x`` where ``m`` names a module of the
    package (``import langgraph_moa.a.m as m``, ``from langgraph_moa.a import m``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules: set[str] = set()  # local names bound to a module of the package
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("langgraph_moa"):
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(f"{node.module}.{alias.name}")
                elif _is_module(f"{node.module}.{alias.name}"):
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules.update(
                alias.asname
                for alias in node.names
                if alias.asname and alias.name.startswith("langgraph_moa")
            )
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and _is_private(node.attr)
        ):
            found.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
    return found


def test_no_private_name_is_read_through_a_module() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}: {reach}"
        for root in [PACKAGE, *USERS]
        for path in sorted(root.rglob("*.py"))
        for reach in _private_reaches(path)
    ]
    assert offenders == []


def test_the_private_reach_check_sees_both_forms(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from langgraph_moa.batch import feeding\n"
        "from langgraph_moa.spec.combining import _RetriesJudge\n"
        "feeding._GC_THRESHOLD\n"
        "feeding.drive_rows\n"
    )
    assert _private_reaches(sample) == [
        "langgraph_moa.spec.combining._RetriesJudge",
        "feeding._GC_THRESHOLD (line 3)",
    ]
