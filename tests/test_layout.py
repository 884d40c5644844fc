"""The layout's rules (ARCHITECTURE.md), read from the source: who may import what, no import
circles, one place for atomic writes and for parsing JSON text."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "labeler"
STAGES = ("files", "caption", "review", "training", "store", "formats", "model", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The modules `path` imports: every import, or only those that run when it is imported
    (module level, including `if TYPE_CHECKING:` blocks, which a reader follows the same way)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = _top_level(tree.body) if top_level_only else ast.walk(tree)
    found = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            # `from labeler.caption import engines` imports the submodule, not a name of the
            # package's own (whose __init__ Python runs first either way)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(base)
    return found


def _top_level(body: list[ast.stmt]):  # type: ignore[no-untyped-def]
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If | ast.Try):  # TYPE_CHECKING, optional imports
            yield from _top_level(node.body)
            for handler in getattr(node, "handlers", []):
                yield from _top_level(handler.body)
            yield from _top_level(node.orelse)


def _importers_of(prefix: str) -> list[str]:
    return sorted(
        name for name, path in MODULES.items()
        if any(i == prefix or i.startswith(prefix + ".")
               for i in _imports(path, top_level_only=False))
    )  # fmt: skip


def test_the_tree_has_its_stages():
    assert {name.split(".")[1] for name in MODULES if name.count(".") >= 2} == set(STAGES)


@pytest.mark.parametrize("library", ["typer", "rich"])
def test_only_the_cli_imports_the_terminal_libraries(library):
    assert [m for m in _importers_of(library) if not m.startswith("labeler.cli")] == []


def test_only_the_store_imports_sqlalchemy():
    assert [m for m in _importers_of("sqlalchemy") if not m.startswith("labeler.store")] == []


@pytest.mark.parametrize("lower", ["labeler.formats", "labeler.model"])
def test_the_store_imports_neither_formats_nor_the_model(lower):
    assert [m for m in _importers_of(lower) if m.startswith("labeler.store")] == []


def test_no_import_circles():
    graph = {
        name: {i for i in _imports(path, top_level_only=True) if i in MODULES and i != name}
        for name, path in MODULES.items()
    }
    circles = []

    def visit(node: str, trail: list[str], done: set[str]) -> None:
        if node in trail:
            circles.append(trail[trail.index(node) :] + [node])
            return
        if node in done:
            return
        for following in sorted(graph[node]):
            visit(following, [*trail, node], done)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        visit(name, [], done)
    assert circles == []


def _calls(path: Path, names: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and f"{owner.id}.{node.func.attr}" in names:
                found.append(f"{_module_name(path)}:{node.lineno} {owner.id}.{node.func.attr}")
    return found


def test_files_are_written_whole_in_one_place():
    """Temporary file and rename: labeler/atomic.py; the report swaps whole folders in place
    (its pages are written through atomic.py)."""
    allowed = {"labeler.atomic", "labeler.review.report"}
    calls = [c for name, path in MODULES.items() if name not in allowed
             for c in _calls(path, {"os.replace", "os.rename", "tempfile.mkstemp"})]  # fmt: skip
    assert calls == []


def test_json_text_is_parsed_in_one_place():
    """Files: formats/streams.py (the one JSON and JSON Lines reader). Besides it only the
    store's JSON columns, and Label Studio's CSV export, whose cells hold JSON."""
    allowed = {"labeler.formats.streams", "labeler.formats.labelstudio"}
    calls = [c for name, path in MODULES.items()
             if name not in allowed and not name.startswith("labeler.store")
             for c in _calls(path, {"json.loads", "json.load", "orjson.loads"})]  # fmt: skip
    assert calls == []
