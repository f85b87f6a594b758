"""The public surface, pinned: the names a user imports from the package root and from each
package's ``__init__`` are fixed lists here, so a change to the public API is a visible change of
this test; every such name resolves; and no other module declares an ``__all__`` (everything else
is the package's own: ``_``-prefixed within its module, or unprefixed and shared within the
package)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "langgraph_moa"

ROOT_NAMES = [
    "Agent",
    "ChatMixtureOfAgents",
    "Layer",
    "MissingCredentialsError",
    "MoAError",
    "MoAInputError",
    "MoARunError",
    "MoAState",
    "Topology",
    "build_graph",
    "build_state_graph",
    "list_presets",
    "load_preset",
    "load_topology",
    "register_model",
    "register_provider",
    "unregister",
]

# Each package's face; a package not listed here has none (an empty or absent `__all__`).
FACES = {
    "langgraph_moa.batch": [
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
    ],
    "langgraph_moa.cli": ["app", "main"],
    "langgraph_moa.evaluation": [
        "DirectGenerator",
        "Judge",
        "Side",
        "TopologyGenerator",
        "judge_agent",
        "judge_topology",
        "load_benchmark",
        "run_eval",
        "write_report",
    ],
    "langgraph_moa.graphs": [
        "Estimate",
        "MoAState",
        "apply_edits",
        "build_graph",
        "build_state_graph",
        "estimate",
        "parse_decision",
    ],
    "langgraph_moa.serving": ["create_app", "run_server"],
    "langgraph_moa.testing": ["Behavior", "FakeAnthropic", "FakeOpenAI"],
}


def _packages() -> list[str]:
    return sorted(
        ".".join(init.parent.relative_to(PACKAGE.parent).parts)
        for init in PACKAGE.rglob("__init__.py")
    )


def _declared_all(path: Path) -> list[str] | None:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        value = node.value
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            assert isinstance(value, ast.List | ast.Tuple), f"{path}: __all__ is not a literal list"
            return [ast.literal_eval(element) for element in value.elts]
    return None


def test_the_root_names_are_the_fixed_sorted_list() -> None:
    import langgraph_moa

    assert langgraph_moa.__all__ == ROOT_NAMES
    assert sorted(ROOT_NAMES) == ROOT_NAMES


@pytest.mark.parametrize("name", ROOT_NAMES)
def test_each_root_name_resolves(name: str) -> None:
    import langgraph_moa

    assert getattr(langgraph_moa, name) is not None
    assert name in dir(langgraph_moa)


def test_an_unknown_root_name_is_an_attribute_error() -> None:
    import langgraph_moa

    with pytest.raises(AttributeError, match="no attribute 'relabel'"):
        langgraph_moa.relabel  # noqa: B018


def test_each_package_face_is_its_fixed_list() -> None:
    faces = {}
    for package in _packages():
        if package == "langgraph_moa":
            continue
        declared = _declared_all(PACKAGE.parent.joinpath(*package.split("."), "__init__.py"))
        if declared:
            faces[package] = declared
    assert faces == FACES
    assert all(sorted(names) == names for names in FACES.values())


@pytest.mark.parametrize("package", sorted(FACES))
def test_each_face_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in FACES[package] if getattr(module, name, None) is None]
    assert missing == []
    namespace: dict[str, object] = {}
    exec(f"from {package} import *", namespace)  # what `import *` gives is the face
    assert sorted(k for k in namespace if k != "__builtins__") == FACES[package]


def test_no_module_but_a_package_init_declares_all() -> None:
    declaring = [
        str(path.relative_to(PACKAGE.parent))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__init__.py" and _declared_all(path) is not None
    ]
    assert declaring == []
