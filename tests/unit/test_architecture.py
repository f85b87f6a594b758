"""The shape of the package, checked: the layer contracts of pyproject.toml (import-linter), no
import cycle between any two modules, and no module importing another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

PACKAGE = Path(__file__).resolve().parents[2] / "langgraph_moa"


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
