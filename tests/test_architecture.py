"""The house's floors, checked on the source (issue #34): every module of jaxnets sits on one floor, imports run
only down (or along a floor), no two modules import each other even through others, and no module is longer than
400 lines. Read from the files with `ast`, so lazy imports inside functions count as much as top-level ones, and
nothing is imported to check it (standard library only).

FLOORS mirrors the table in docs/architecture.md ("Floors"); a test below keeps the two equal.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.core  # standard library only: runs in the core-only environment too

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxnets"
MAX_LINES = 400

# floor → the rooms on it, as paths inside jaxnets/ (a folder holds every module under it). Higher floors import
# lower ones, never the reverse: face → train/serving → pretrained → inference → report → data → runtime/store
# → models → ground (rooms that import nothing of jaxnets, so that any floor may use them).
FLOORS: dict[int, tuple[str, ...]] = {
    8: ("__init__.py", "__main__.py", "cli/", "bench/", "service_cli.py", "demo.py", "options.py", "nnx.py"),
    7: ("train/", "serving/"),
    6: ("pretrained/",),
    5: ("inference/",),
    4: ("report/",),
    3: ("data/",),
    2: ("runtime/", "checkpoint.py", "integrity.py", "cache.py"),
    1: ("models/",),
    0: ("_version.py", "extras.py"),
}
FLOOR_NAMES = {8: "face", 7: "train/serving", 6: "pretrained", 5: "inference", 4: "report", 3: "data",
               2: "runtime/store", 1: "models", 0: "ground"}

# Modules still over MAX_LINES, each with whose work it is; an entry goes when its file is split.
LONG_FOR_NOW: dict[str, str] = {}


def _room_module(room: str) -> str:
    """A room of FLOORS as a dotted module prefix: `cli/` → jaxnets.cli, `__init__.py` → jaxnets."""
    name = room.removesuffix("/").removesuffix(".py")
    return "jaxnets" if name == "__init__" else "jaxnets." + name.replace("/", ".")


ROOMS = {_room_module(room): floor for floor, rooms in FLOORS.items() for room in rooms}


def _modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name, for its __init__.py)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def floor_of(module: str) -> int | None:
    """The floor of the room that holds `module`: the longest room prefix that names it or a package above it."""
    best = None
    for room, floor in ROOMS.items():
        if (module == room or (room != "jaxnets" and module.startswith(room + "."))) and (
                best is None or len(room) > len(best[0])):
            best = (room, floor)
    return None if best is None else best[1]


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _existing(name: str) -> str:
    """The module an import of `name` loads last: `name` itself, or the module that holds the attribute."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def _targets(module: str, node: ast.AST) -> list[str]:
    """The jaxnets modules an import statement (or a lazy-table entry) of `module` loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = _package_of(module).split(".")
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    # `from x import y` loads x.y when y is a submodule, else x
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]


def _lazy_table(module: str, tree: ast.Module) -> list[str]:
    """A lazy package's `_EXPORTS = {"submodule": (names…)}` table (PEP 562): each key is a submodule it loads."""
    found = []
    for node in tree.body:
        named = isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS"
                                                     for t in node.targets)
        if named and isinstance(node.value, ast.Dict):
            found += [f"{_package_of(module)}.{k.value}" for k in node.value.keys
                      if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    return found


def _dynamic(node: ast.AST) -> list[str]:
    """`importlib.import_module("jaxnets.x")` with a constant absolute name."""
    call = isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
    if call and node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("jaxnets"):
        return [node.args[0].value]
    return []


def imports_of(module: str, source: str | None = None) -> dict[str, int]:
    """{jaxnets module imported: first line} for `module`: its own imports, lazy ones included, and the packages
    above an imported module that lie outside `module`'s own package (importing a.b.c runs a/__init__ and
    a/b/__init__ first)."""
    tree = ast.parse(MODULES[module].read_text() if source is None else source)
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        if not (name == "jaxnets" or name.startswith("jaxnets.")):
            return
        name = _existing(name)
        chain = name.split(".")
        for i in range(2, len(chain) + 1):  # the root package is every module's, never an arrow
            target = ".".join(chain[:i])
            inside = module == target or module.startswith(target + ".")
            if target in MODULES and not inside:
                found.setdefault(target, line)
        if name == "jaxnets" and module != "jaxnets":
            found.setdefault("jaxnets", line)  # an import of the face itself (`from jaxnets import x`)

    for node in ast.walk(tree):
        for name in [*_targets(module, node), *_dynamic(node)]:
            add(name, node.lineno)
    for name in _lazy_table(module, tree):
        add(name, 1)
    return found


def graph() -> dict[str, dict[str, int]]:
    return {module: imports_of(module) for module in MODULES}


def upward_imports(arrows: dict[str, dict[str, int]]) -> list[str]:
    wrong = []
    for module, targets in arrows.items():
        for target, line in targets.items():
            if floor_of(target) > floor_of(module):
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line} ({FLOOR_NAMES[floor_of(module)]}) imports "
                             f"{target} ({FLOOR_NAMES[floor_of(target)]}, a higher floor)")
    return wrong


def cycles(arrows: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), each as the modules along it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the ~100 modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in arrows.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in arrows.get(v, {}):
                groups.append(group)

    for v in sorted(arrows):
        if v not in index:
            visit(v)
    return [_one_cycle(arrows, set(group)) for group in groups]


def _one_cycle(arrows: dict[str, dict[str, int]], group: set[str]) -> list[str]:
    """A path that starts and ends at the same module, inside one strongly connected group (breadth first)."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(arrows[v]):
            if w == start:
                return [*paths[v], start]
            if w in group and w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return sorted(group)


def test_every_module_has_a_floor():
    homeless = [m for m in MODULES if floor_of(m) is None]
    assert not homeless, f"give these a floor in FLOORS (and docs/architecture.md): {homeless}"


def test_imports_only_run_down_the_floors():
    wrong = upward_imports(graph())
    assert not wrong, "imports back up a floor:\n" + "\n".join(wrong)


def test_no_module_imports_itself_back():
    found = cycles(graph())
    assert not found, "import circles:\n" + "\n".join(" → ".join(c) for c in found)


def test_the_ground_floor_imports_nothing_of_jaxnets():
    ground = [m for m in MODULES if floor_of(m) == 0]
    assert all(not imports_of(m) for m in ground), {m: imports_of(m) for m in ground if imports_of(m)}


def test_no_module_is_longer_than_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    unexpected = {p: n for p, n in long.items() if p not in LONG_FOR_NOW}
    assert not unexpected, f"modules over {MAX_LINES} lines (split them, one job each): {unexpected}"


def test_the_checks_catch_the_loops_issue_34_removed():
    """Each old loop, put back into a copy of its module's source, is caught (the tests above are not vacuous)."""
    arrows = graph()
    back = {
        "jaxnets.data.trivial": "from .augment import AugmentSpec",  # augment ↔ trivial
        "jaxnets.report.html": "from ..inference.predictor import Predictor",  # report → inference
        "jaxnets.pretrained": "def f():\n    from ..train.state import TrainState",  # lazy, pretrained → train
        "jaxnets.runtime.native": "def g():\n    from ..pretrained.sources import cache_dir",  # runtime → pretrained
        "jaxnets.inference.card": "from .. import __version__",  # inference → the face
    }
    for module, line in back.items():
        changed = {**arrows, module: imports_of(module, MODULES[module].read_text() + "\n" + line + "\n")}
        assert upward_imports(changed) or cycles(changed), f"{module} + {line!r} went unnoticed"
    circle = {**arrows, "jaxnets.data.trivial": imports_of(
        "jaxnets.data.trivial", MODULES["jaxnets.data.trivial"].read_text() + "\nfrom .augment import PRESETS\n")}
    assert any("jaxnets.data.augment" in c and "jaxnets.data.trivial" in c for c in cycles(circle))


def _documented_floors() -> dict[int, set[str]]:
    """The Floors table of docs/architecture.md: `| 8 | face | `cli/`, `bench/`, … |`."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Floors", 1)[1].split("\n## ", 1)[0]
    floors = {}
    for row in re.finditer(r"^\|\s*(\d+)\s*\|[^|]*\|([^|]*)\|", section, re.MULTILINE):
        floors[int(row.group(1))] = set(re.findall(r"`([^`]+)`", row.group(2)))
    return floors


def test_the_documented_floors_are_the_tested_ones():
    assert _documented_floors() == {floor: set(rooms) for floor, rooms in FLOORS.items()}
