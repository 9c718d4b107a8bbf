"""Structural rules of the inferkit package, checked on its source with ``ast`` (nothing is imported).

(a) no import cycle among inferkit modules (function-level imports included);
(b) no function longer than ``MAX_FUNCTION_LINES``;
(c) no attribute probe (``getattr``/``hasattr``) on a model, sampler, tuner or data set outside
    ``inferkit/interfaces.py``;
(d) import layers: ``interfaces`` imports only low-level modules from inferkit (``errors``, ``devices``,
    ``seeding``), and those import nothing from inferkit except ``errors``; models, samplers, tuners
    and data import none of trainer, evaluation, cli, runs.

The allow-lists below name today's exceptions to (b) and (c). They may only shrink: the tests fail
when code outside a list offends, and also when a listed entry no longer offends (then delete it).
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "inferkit"

MAX_FUNCTION_LINES = 80

# (b) functions over MAX_FUNCTION_LINES lines, as "module:qualname".
LONG_FUNCTIONS_ALLOWED: set[str] = set()

# (c) attribute probes, as "file:qualname:getattr(first, second)", each with why it is still there.
PROBES_ALLOWED = {
    # not plugins, but neither `self` nor a module by the rule's reading
    "inferkit/acceleration.py:_ForbidHostSync.__torch_function__:getattr(func, '__name__')": "a torch function's name",
    "inferkit/acceleration.py:_device_to_host:getattr(func, '__name__')": "a torch function's name",
    "inferkit/models/pyro_model.py:load_pyro_function:getattr(module, attribute)": "a user module named by the user",
    "inferkit/data/base.py:TensorSplit.__init__:getattr(x, 'shape')": "describes a bad argument in an error message",
}

# (c) first arguments that are never plugins.
NOT_PLUGINS = {"self", "cls", "torch"}

# (d) import layers. The low-level modules import nothing from inferkit but errors (errors: nothing);
# inferkit.latents is not one of them: it takes its types (Latents, Model) from interfaces, so
# interfaces must not import it (that would also be a cycle, which (a) reports).
LOW_LEVEL_MODULES = {"inferkit.errors", "inferkit.devices", "inferkit.seeding"}
LOW_LEVEL_MAY_IMPORT = {"inferkit.errors"}
PLUGIN_PACKAGES = ("inferkit.models", "inferkit.samplers", "inferkit.tuners", "inferkit.data")
APPLICATION_MODULES = ("inferkit.trainer", "inferkit.evaluation", "inferkit.cli", "inferkit.runs")


# --------------------------------------------------------------------------- reading the package


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


SOURCES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in SOURCES.items()}


def is_package(module: str) -> bool:
    return SOURCES[module].name == "__init__.py"


def resolve_from(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(module: str) -> set[str]:
    """The inferkit modules ``module`` imports anywhere in its body (functions and ``TYPE_CHECKING``
    blocks included): ``from P import N`` is an import of ``P.N`` when that is a module, else of ``P``."""
    found = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = resolve_from(module, node)
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in SOURCES else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in SOURCES:  # import inferkit.a.b.Name-like paths: nearest module
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


IMPORTS = {module: imported_modules(module) for module in SOURCES}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path ``a -> ... -> a``) for every back edge a depth-first search meets."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


class _Qualnames(ast.NodeVisitor):
    """Collects ``(qualname, node)`` for every function, and for every call the qualname it is in."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.functions: list[tuple[str, ast.AST]] = []
        self.calls: list[tuple[str, ast.Call]] = []

    def _scope(self, node, is_function: bool) -> None:
        self.stack.append(node.name)
        if is_function:
            self.functions.append((".".join(self.stack), node))
        self.generic_visit(node)
        self.stack.pop()

    def visit_ClassDef(self, node):
        self._scope(node, False)

    def visit_FunctionDef(self, node):
        self._scope(node, True)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node):
        self.calls.append((".".join(self.stack) or "<module>", node))
        self.generic_visit(node)


SCOPES = {}
for _module, _tree in TREES.items():
    SCOPES[_module] = _Qualnames()
    SCOPES[_module].visit(_tree)


def long_functions() -> dict[str, int]:
    """``module:qualname`` -> lines, for every function (decorators excluded) over the limit."""
    return {f"{module}:{qualname}": node.end_lineno - node.lineno + 1
            for module, scopes in SCOPES.items() for qualname, node in scopes.functions
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES}


def module_names_bound(module: str) -> set[str]:
    """Names that ``module`` binds to modules by importing them (``import x``, ``import x.y as z``,
    ``from p import m`` where ``p.m`` is a module)."""
    import importlib.util

    names = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            names.update(alias.asname or alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = resolve_from(module, node)
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in SOURCES:
                    names.add(alias.asname or alias.name)
                    continue
                try:
                    spec = importlib.util.find_spec(full) if source.partition(".")[0] != "inferkit" else None
                except (ImportError, ValueError):
                    spec = None
                if spec is not None:
                    names.add(alias.asname or alias.name)
    return names


def probes() -> Counter:
    """``file:qualname:getattr(first, second)`` for every ``getattr``/``hasattr`` outside
    ``inferkit/interfaces.py`` whose first argument is a name other than ``self``, ``cls``, ``torch``
    or a module the file imports."""
    found: Counter = Counter()
    for module, scopes in SCOPES.items():
        path = SOURCES[module].relative_to(ROOT).as_posix()
        if module == "inferkit.interfaces":
            continue
        modules = module_names_bound(module)
        for qualname, call in scopes.calls:
            if not (isinstance(call.func, ast.Name) and call.func.id in ("getattr", "hasattr") and call.args):
                continue
            first = call.args[0]
            if not isinstance(first, ast.Name) or first.id in NOT_PLUGINS or first.id in modules:
                continue
            shown = ", ".join(ast.unparse(arg) for arg in call.args[:2])
            found[f"{path}:{qualname}:{call.func.id}({shown})"] += 1
    return found


# --------------------------------------------------------------------------- the rules


def test_the_package_is_read():
    assert "inferkit.interfaces" in SOURCES and "inferkit.trainer" in SOURCES
    assert "inferkit.errors" in IMPORTS["inferkit.interfaces"]


def test_no_import_cycle():
    cycles = find_cycles(IMPORTS)
    assert not cycles, "import cycles among inferkit modules:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_find_cycles_reports_the_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_long_function_outside_the_allow_list():
    found = long_functions()
    new = {name: n for name, n in found.items() if name not in LONG_FUNCTIONS_ALLOWED}
    assert not new, (f"functions over {MAX_FUNCTION_LINES} lines (split them): "
                     + ", ".join(f"{name} ({n} lines)" for name, n in sorted(new.items())))


def test_every_allowed_long_function_is_still_long():
    stale = sorted(LONG_FUNCTIONS_ALLOWED - set(long_functions()))
    assert not stale, f"no longer over {MAX_FUNCTION_LINES} lines (or gone): remove {stale} from LONG_FUNCTIONS_ALLOWED"


def test_no_probe_outside_the_allow_list():
    new = sorted(set(probes()) - set(PROBES_ALLOWED))
    assert not new, ("getattr/hasattr on a model, sampler, tuner or data set (declare the attribute on the "
                     "interface, or an optional Protocol, instead): " + "; ".join(new))


def test_every_allowed_probe_is_still_there():
    stale = sorted(set(PROBES_ALLOWED) - set(probes()))
    assert not stale, f"these probes are gone: remove {stale} from PROBES_ALLOWED"


def test_probe_rule_on_examples():
    source = ("import torch\nimport numpy as np\nfrom os import path\n"
              "def f(self, model):\n"
              "    getattr(self, 'a'); getattr(torch, 'float32'); getattr(np, 'pi'); getattr(path, 'join')\n"
              "    hasattr(model, 'rbm')\n")
    TREES["inferkit._example"] = ast.parse(source)
    SOURCES["inferkit._example"] = PACKAGE / "_example.py"
    SCOPES["inferkit._example"] = _Qualnames()
    SCOPES["inferkit._example"].visit(TREES["inferkit._example"])
    try:
        assert [k for k in probes() if "_example" in k] == ["inferkit/_example.py:f:hasattr(model, 'rbm')"]
    finally:
        for table in (TREES, SOURCES, SCOPES):
            del table["inferkit._example"]


def test_interfaces_import_only_low_level_modules():
    extra = IMPORTS["inferkit.interfaces"] - LOW_LEVEL_MODULES
    assert not extra, f"inferkit.interfaces imports {sorted(extra)}; it may import only {sorted(LOW_LEVEL_MODULES)}"


@pytest.mark.parametrize("module", sorted(LOW_LEVEL_MODULES))
def test_low_level_modules_import_only_errors(module):
    assert module in SOURCES, f"{module} is gone: update LOW_LEVEL_MODULES"
    extra = IMPORTS[module] - LOW_LEVEL_MAY_IMPORT - {module}
    assert not extra, f"{module} is low-level (inferkit.interfaces imports it) but imports {sorted(extra)}"


@pytest.mark.parametrize("package", PLUGIN_PACKAGES)
def test_plugin_packages_do_not_import_the_application(package):
    offending = {f"{module} imports {target}"
                 for module, targets in IMPORTS.items() if module == package or module.startswith(package + ".")
                 for target in targets
                 if any(target == app or target.startswith(app + ".") for app in APPLICATION_MODULES)}
    assert not offending, "; ".join(sorted(offending))
