"""The import contract of ``chatlm``: no import circles, and imports flowing one way through the layers.

Read from the source with ``ast`` (nothing is imported, no model, no database: a fraction of a second),
counting every import: at the top of a module, inside functions and under ``TYPE_CHECKING``, since an
import inside a function is how a circle hides. From the bottom up:

    base       config, errors, the torch thread policy and the pure rules (prompts, limits, transcript),
               importing only each other
    core       engine | knowledge | store, none of them importing another
    services   identity, chat (but its pure rules), feedback, training, evaluation, adapters: they tie
               the core together and take what they are given
    compose    the composition root (settings -> database -> backend -> services)
    front      ui | api, neither importing the other
    entry      the entry points (server, ``chatlm.cli``, the training worker, ``adapters.ship``):
               the only modules that import ``compose``, imported by no module but another entry point

A module imports only modules of its own layer or lower ones, and in ``core`` and ``front`` only its own
package. A rule that cannot hold yet is an entry of ``EXCEPTIONS`` with its reason; an exception that no
longer occurs fails the test too, so the list only shrinks. Not checked yet, since it does not hold: that
ui and api reach the core only through services (they use ``store`` and ``engine`` types directly), and an
order among the services (they only must not import each other in a circle).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chatlm"

ENTRY_POINTS = frozenset({
    "chatlm.__main__", "chatlm.cli", "chatlm.server", "chatlm.training.worker", "chatlm.adapters.ship",
})
"""Modules, or packages and everything in them, that only entry points are: ``chatlm.cli`` is the command line."""
PLACES = {  # a module, or a package and everything in it -> its layer (the longest name wins)
    "chatlm.config": "base", "chatlm.errors": "base", "chatlm.torch_threads": "base",
    "chatlm.chat.prompts": "base", "chatlm.chat.limits": "base", "chatlm.chat.transcript": "base",
    "chatlm.engine": "engine", "chatlm.knowledge": "knowledge", "chatlm.store": "store",
    "chatlm.identity": "services", "chatlm.chat": "services", "chatlm.adapters": "services",
    "chatlm.feedback": "services", "chatlm.training": "services", "chatlm.evaluation": "services",
    "chatlm.compose": "compose",
    "chatlm.ui": "ui", "chatlm.api": "api",
}
RANK = {"base": 0, "engine": 1, "knowledge": 1, "store": 1, "services": 2, "compose": 3, "ui": 4, "api": 4,
        "entry": 5}
"""Layers of one rank that are not one layer (engine, knowledge, store; ui, api) are independent."""

EXCEPTIONS: dict[tuple[str, str], str] = {}
"""(importer, imported) pairs that break a layering rule today, each with why; never a circle."""


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_names(source: str, package: str) -> list[tuple[str, int]]:
    """(dotted name, line) of every import in ``source``, whatever it sits in, relative ones made
    absolute from ``package``; ``from a import b`` gives ``a.b`` (a module, or a name in ``a``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {module of ours it imports: line of the first such import}."""
    known = modules()

    def resolve(name: str) -> str | None:  # ``chatlm.store.db.transaction`` -> ``chatlm.store.db``
        parts = name.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        return ".".join(parts) or None

    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target, line in imported_names(path.read_text(encoding="utf-8"), package):
            found = resolve(target) if target.split(".")[0] == "chatlm" else None
            if found is not None and found != name:
                graph[name].setdefault(found, line)
    return graph


def is_entry(module: str) -> bool:
    return any(module == e or module.startswith(e + ".") for e in ENTRY_POINTS)


def layer(module: str) -> str | None:
    if is_entry(module):
        return "entry"
    if module == "chatlm":
        return "base"
    places = [p for p in PLACES if module == p or module.startswith(p + ".")]
    return PLACES[max(places, key=len)] if places else None


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(graph) | {w for targets in graph.values() for w in targets}):
        if v not in index:
            visit(v)
    return found


def broken_rule(importer: str, imported: str) -> str | None:
    """Which rule the import breaks, or None."""
    a, b = layer(importer), layer(imported)
    assert a is not None and b is not None
    if imported == "chatlm.compose" and a != "entry":
        return "only entry points import compose"
    if RANK[b] > RANK[a]:
        return f"{a} imports the higher layer {b}"
    if RANK[b] == RANK[a] and a != b:
        return f"{a} and {b} are independent"
    return None


def test_every_kind_of_import_is_read() -> None:
    source = """
from __future__ import annotations
import chatlm.store.db as database
from typing import TYPE_CHECKING
from chatlm import compose
if TYPE_CHECKING:
    from chatlm.config import Settings
def later():
    from chatlm.training.rounds import start_round
class Tab:
    def build(self):
        from . import training
        from ..store import repo
"""
    assert sorted(name for name, _ in imported_names(source, "chatlm.ui")) == [
        "__future__.annotations", "chatlm.compose", "chatlm.config.Settings", "chatlm.store.db",
        "chatlm.store.repo", "chatlm.training.rounds.start_round", "chatlm.ui.training", "typing.TYPE_CHECKING"]
    graph = import_graph()
    assert len(modules()) > 80 and graph["chatlm.server"]["chatlm.compose"]  # ``from chatlm import compose``


def test_no_import_circles() -> None:
    graph = import_graph()
    found = cycles(graph)
    shown = [f"{len(c)} modules: " + ", ".join(c) + "".join(f"\n    {a} -> {b} (line {graph[a][b]})"
                                                      for a in c for b in graph[a] if b in c) for c in found]
    assert not found, "import circles (imports inside functions count):\n" + "\n".join(shown)


def test_every_module_has_a_layer() -> None:
    assert [m for m in modules() if layer(m) is None] == [], "place the new module in PLACES or ENTRY_POINTS"


def test_imports_flow_down_the_layers() -> None:
    graph = import_graph()
    broken = {(a, b): rule for a, targets in graph.items() for b in targets if (rule := broken_rule(a, b))}
    new = [f"{a} -> {b} (line {graph[a][b]}): {rule}" for (a, b), rule in sorted(broken.items())
           if (a, b) not in EXCEPTIONS]
    assert not new, "imports against the layers:\n" + "\n".join(new)
    gone = [pair for pair in EXCEPTIONS if pair not in broken]
    assert not gone, f"no longer happening, take them out of EXCEPTIONS: {gone}"


def test_only_entry_points_import_compose_and_nothing_imports_an_entry_point() -> None:
    graph = import_graph()
    composing = {a for a, targets in graph.items() if "chatlm.compose" in targets and not is_entry(a)}
    assert not composing, f"import compose without being entry points: {composing}"
    calling = {a for a, targets in graph.items() if any(map(is_entry, targets)) and not is_entry(a)}
    assert not calling, f"import an entry point without being one: {calling}"


def test_the_checks_catch_what_they_are_for() -> None:
    """The rules on made-up imports: the circles this package had, and imports against the layers."""
    old = {"chatlm.compose": {"chatlm.chat.turns": 1}, "chatlm.chat.turns": {"chatlm.training.rounds": 1},
           "chatlm.training.rounds": {"chatlm.compose": 1}, "chatlm.ui.signin": {"chatlm.ui.hf_signin": 1},
           "chatlm.ui.hf_signin": {"chatlm.ui.signin": 1}}
    assert cycles(old) == [["chatlm.chat.turns", "chatlm.compose", "chatlm.training.rounds"],
                           ["chatlm.ui.hf_signin", "chatlm.ui.signin"]]
    assert broken_rule("chatlm.training.rounds", "chatlm.compose") == "only entry points import compose"
    assert broken_rule("chatlm.ui.chat", "chatlm.compose") == "only entry points import compose"
    assert broken_rule("chatlm.training.rounds", "chatlm.training.worker") == "services imports the higher layer entry"
    assert broken_rule("chatlm.store.repo", "chatlm.engine.params") == "store and engine are independent"
    assert broken_rule("chatlm.config", "chatlm.store.db") == "base imports the higher layer store"
    assert broken_rule("chatlm.chat.turns", "chatlm.ui.chat_view") == "services imports the higher layer ui"
    assert broken_rule("chatlm.training.worker", "chatlm.compose") is None
    assert broken_rule("chatlm.ui.training", "chatlm.chat.turns") is None
