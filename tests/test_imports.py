"""House rules on imports, checked by parsing every module (ast), so a cycle fails on the day it appears.

* Internal modules are imported at the top of a file: a function-level import of a leaninfer module would
  hide a cycle until the one code path that runs it.
* The graph of top-level internal imports has no cycle.
* The model layer (and the manifest format) reach no module of the step registry or the optimize job.
"""

from __future__ import annotations

import ast
from pathlib import Path

import leaninfer

ROOT = Path(leaninfer.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, modules: set[str]) -> list[tuple[str, int, bool]]:
    """(internal module imported, line, at top level?) for every import statement of the file."""
    name = _module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(n) for n in tree.body}
    for n in tree.body:  # `if TYPE_CHECKING:` blocks and try/except at the top level count as top level
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(c) for c in ast.walk(n)}
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, path.name == "__init__.py", node)
            # `from . import x` imports the submodule x; `from .m import f` imports m.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            if t == "leaninfer" or t.startswith("leaninfer."):
                while t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                out.append((t, node.lineno, id(node) in top))
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    files = sorted(ROOT.rglob("*.py"))
    modules = {_module_name(p) for p in files}
    graph, late = {}, []
    for p in files:
        name = _module_name(p)
        graph[name] = set()
        for target, line, at_top in _imports(p, modules):
            if not at_top:
                late.append(f"{p.relative_to(ROOT.parent)}:{line} imports {target} inside a function")
            elif target != name:
                graph[name].add(target)
    return graph, late


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_internal_imports_are_at_the_top_of_each_file():
    _, late = _graph()
    assert not late, "internal imports belong at the top of the file:\n" + "\n".join(late)


def test_no_import_cycle_among_leaninfer_modules():
    graph, _ = _graph()
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_cycle_detector_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(graph.get(n, ()))
    return seen


def test_the_model_layer_does_not_depend_on_the_step_registry():
    graph, _ = _graph()
    for name in [n for n in graph if n.startswith("leaninfer.models")] + ["leaninfer.artifacts"]:
        bad = sorted(m for m in _reachable(graph, name) if m.startswith(("leaninfer.steps", "leaninfer.pipeline")))
        assert not bad, f"{name} reaches {bad}"


# The layering, as a table: which layer may import which. A module outside every named layer is "base" (errors,
# cost, hardware, latency, quality, data, logs, artifacts, spec_text, listing) and may import only base modules.
# Read it as DESIGN.md's arrows: models <- steps <- pipeline; models <- engines <- http; finops <- gate <- http;
# benchmarks -> engines and finops' file formats, never http or the gate. "app" is the CLI and the public API,
# which wire everything together.
LAYER_OF = [  # (module prefix, layer), most specific first
    ("leaninfer.finops.gate", "gate"), ("leaninfer.finops", "finops"), ("leaninfer.models", "models"),
    ("leaninfer.steps", "steps"), ("leaninfer.pipeline", "pipeline"), ("leaninfer.evaluate", "evaluate"),
    ("leaninfer.engines", "engines"), ("leaninfer.serving", "http"), ("leaninfer.benchmarks", "benchmarks"),
    ("leaninfer.cli", "app"), ("leaninfer.demo", "app"),
]
MAY_IMPORT = {
    "base": {"base"},
    "models": {"base"},
    "steps": {"base", "models"},
    "evaluate": {"base", "models"},
    "pipeline": {"base", "models", "steps", "evaluate"},
    "engines": {"base", "models"},
    "finops": {"base"},
    "gate": {"base", "finops"},
    "http": {"base", "models", "engines", "finops", "gate"},
    # finops (not the gate): bench --endpoint writes the tariff file whose format finops owns (price_list).
    "benchmarks": {"base", "models", "steps", "pipeline", "evaluate", "engines", "finops"},
    "app": {"base", "models", "steps", "pipeline", "evaluate", "engines", "finops", "gate", "http", "benchmarks",
            "app"},
}


def _layer(module: str) -> str:
    if module == "leaninfer":
        return "app"
    return next((layer for prefix, layer in LAYER_OF if module == prefix or module.startswith(prefix + ".")),
                "base")


def test_every_import_follows_the_layering_table():
    graph, _ = _graph()
    bad = sorted(f"{a} ({_layer(a)}) imports {b} ({_layer(b)})" for a, targets in graph.items() for b in targets
                 if _layer(b) != _layer(a) and _layer(b) not in MAY_IMPORT[_layer(a)])
    assert not bad, "imports against the layering (tests/test_imports.py MAY_IMPORT):\n" + "\n".join(bad)


def test_benchmarks_and_engines_never_reach_the_http_layer():
    graph, _ = _graph()
    for name in [n for n in graph if _layer(n) in ("benchmarks", "engines", "finops", "gate")]:
        bad = sorted(m for m in _reachable(graph, name) if _layer(m) == "http")
        assert not bad, f"{name} reaches the HTTP layer: {bad}"


def test_the_layering_check_finds_a_planted_arrow():
    assert _layer("leaninfer.benchmarks.runner") == "benchmarks" and _layer("leaninfer.serving.routes") == "http"
    assert "http" not in MAY_IMPORT["benchmarks"] and "engines" not in MAY_IMPORT["finops"]
    assert _layer("leaninfer.finops.gate") == "gate" and _layer("leaninfer.errors") == "base"
