"""Imports only go down: io → tracking → triage → learn → flows → cli (docs/ARCHITECTURE.md).

Every module of pipeline/, flows/ and models/ is parsed with `ast`; imports inside functions and
under `TYPE_CHECKING` count too, since a lazy import upward is still a dependency upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Rank of each layer (longest prefix wins). A module may import its own layer and lower ones only.
LAYERS = {
    "models": 0,  # Keras builders and losses: nothing of pipeline/ or flows/
    "pipeline": 0,  # the package root itself (`__version__`), not a prefix
    "pipeline.io": 1,
    "pipeline.tracking": 2,
    "pipeline.tracking_meta": 2,
    "pipeline.triage": 3,
    "pipeline.learn": 4,
    "flows": 5,
    "pipeline.cli": 6,
}
OURS = ("pipeline", "flows", "models")


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name; None for a module in no layer (an unplaced one)."""
    found = [
        name
        for name in LAYERS
        if module == name or (name != "pipeline" and module.startswith(name + "."))
    ]
    return max(found, key=len) if found else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """`(line, dotted module)` of every import of ours in `source` (relative ones resolved)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if _is_module(sub) else base))
    return [(line, name) for line, name in found if name.split(".")[0] in OURS]


def sources() -> list[Path]:
    return sorted(p for top in OURS for p in (ROOT / top).rglob("*.py"))


def test_the_check_sees_the_whole_code_base():
    names = {module_name(p) for p in sources()}
    expected = {"pipeline.io.index", "pipeline.triage.rule", "pipeline.cli.main", "flows.triage"}
    assert expected <= names
    assert len(names) > 40


def test_every_module_of_pipeline_is_in_a_layer():
    unplaced = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "pipeline").rglob("*.py")
        if layer_of(module_name(p)) is None
    ]
    assert not unplaced, f"place these in io/, triage/, learn/ or cli/: {unplaced}"


def test_the_checker_catches_an_upward_import():
    source = "def f():\n    from pipeline.cli.main import main\n\nfrom pipeline import tracking\n"
    found = sorted(imports_of(source, "pipeline.io.index"))
    assert found == [(2, "pipeline.cli.main"), (4, "pipeline.tracking")]
    assert [layer_of(name) for _, name in found] == ["pipeline.cli", "pipeline.tracking"]
    assert LAYERS["pipeline.cli"] > LAYERS["pipeline.tracking"] > LAYERS["pipeline.io"]


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_go_down(path: Path):
    module = module_name(path)
    own = layer_of(module)
    if own is None:
        pytest.skip("unplaced: test_every_module_of_pipeline_is_in_a_layer reports it")
    source = path.read_text(encoding="utf-8")
    upward = [
        f"line {line}: {name} ({layer_of(name)})"
        for line, name in imports_of(source, module, path.name == "__init__.py")
        if layer_of(name) is not None and LAYERS[layer_of(name)] > LAYERS[own]
    ]
    assert not upward, f"{module} ({own}) imports from a higher layer: {upward}"
