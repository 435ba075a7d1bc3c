"""The layout rules, measured on the code as it stands (see README's "Layout"):

- no import cycle between modules, counting imports made inside functions;
- an import inside a function only where it keeps a heavy library (torch, Ray, MLflow, plotly...) off a start-up
  path, with a comment on that line or the one above saying so;
- no module over 400 lines (tests and benchmarks included), no function over 60 lines (ternsearch/, trainables/);
- no underscore name imported from another subpackage;
- dependencies run one way: errors < spec < results < tracking < report < run < cli, and ``trainables`` never
  imports ``ternsearch``.

``python tests/test_layout.py`` prints every finding, for a clean-up.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("ternsearch", "trainables")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# What a function-local import may defer: these take seconds to import, or pull in a GPU runtime.
HEAVY = {"torch", "torchvision", "ray", "mlflow", "plotly", "optuna", "pandas", "pyarrow", "numpy", "sklearn",
         "onnx", "onnxruntime", "onnxscript", "tensorboard", "scipy", "yaml_ext",
         "optuna_dashboard"}  # optuna_dashboard imports optuna, and is an optional extra besides


# The layers of ternsearch/, lowest first: a module imports only from its own layer or lower ones.
LAYERS = ("ternsearch", "ternsearch.errors", "ternsearch.numbers", "ternsearch.spec", "ternsearch.results",
          "ternsearch.tracking", "ternsearch.report", "ternsearch.run", "ternsearch.cli")


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    lines: list[str]
    is_package: bool
    top_imports: set[str] = field(default_factory=set)      # internal modules imported at module level
    local_imports: list[tuple[int, str, bool]] = field(default_factory=list)  # line, module, internal
    heavy_top: bool = False                                  # imports a heavy library at module level

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0] or self.name


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def load_modules(folders=PRODUCT) -> dict[str, Module]:
    modules = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            name, is_package = _module_name(path)
            modules[name] = Module(name, path, ast.parse(text), text.splitlines(), is_package)
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, local: bool = False):
    """(node, inside a function) for every import statement that runs (not those under ``if TYPE_CHECKING``)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, local
        else:
            inside = local or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _imports(node, inside)


def _targets(node, module: Module, modules: dict[str, Module]) -> list[tuple[str, list[str]]]:
    """(imported module, names imported from it) for one import statement."""
    if isinstance(node, ast.Import):
        return [(alias.name, []) for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.package.split(".")
        anchor = anchor[:len(anchor) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append((sub, []) if sub in modules else (base, [alias.name]))
    return out


def _internal(name: str, modules: dict[str, Module]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def analyse(modules: dict[str, Module]) -> None:
    for module in modules.values():
        for node, local in _imports(module.tree):
            for target, _names in _targets(node, module, modules):
                internal = _internal(target, modules)
                if local:
                    module.local_imports.append((node.lineno, internal or target, internal is not None))
                elif internal:
                    module.top_imports.add(internal)
                elif target.split(".")[0] in HEAVY:
                    module.heavy_top = True
        module.top_imports.discard(module.name)


def edges(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Every module's internal imports, module-level and function-local alike."""
    graph = {name: set(m.top_imports) for name, m in modules.items()}
    for name, m in modules.items():
        graph[name] |= {target for _line, target, internal in m.local_imports if internal and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def heavy_modules(modules: dict[str, Module]) -> set[str]:
    """Internal modules whose import (module level, transitively) imports a heavy library."""
    heavy = {name for name, m in modules.items() if m.heavy_top}
    changed = True
    while changed:
        changed = False
        for name, m in modules.items():
            if name not in heavy and m.top_imports & heavy:
                heavy.add(name)
                changed = True
    return heavy


def _commented(lines: list[str], i: int) -> bool:
    """A comment on the import's line, on another line of its group of imports, or on the line above the group."""
    while i >= 0 and lines[i].lstrip().startswith(("from ", "import ")):
        if "#" in lines[i]:
            return True
        i -= 1
    return i >= 0 and "#" in lines[i]


def local_import_findings(modules: dict[str, Module]) -> list[str]:
    heavy = heavy_modules(modules)
    findings = []
    for m in modules.values():
        for line, target, internal in sorted(set(m.local_imports)):
            where = f"{m.path.relative_to(ROOT)}:{line}: import of {target} inside a function"
            if not (target in heavy if internal else target.split(".")[0] in HEAVY):
                findings.append(f"{where}: it is not heavy, import it at the top")
            elif not _commented(m.lines, line - 1):
                findings.append(f"{where}: say why in a comment (which start-up path it keeps light)")
    return findings


def _subpackage(m: Module) -> str:
    """``ternsearch.spec`` for ternsearch/spec/*.py, ``ternsearch`` for ternsearch/cli.py, ``trainables``."""
    return ".".join(m.package.split(".")[:2])


def private_import_findings(modules: dict[str, Module]) -> list[str]:
    findings = []
    for m in modules.values():
        for node, _local in _imports(m.tree):
            for target, names in _targets(node, m, modules):
                internal = _internal(target, modules)
                if not internal:
                    continue
                same = _subpackage(modules[internal]) == _subpackage(m)
                for name in names:
                    if name.startswith("_") and not name.startswith("__") and not same:
                        findings.append(f"{m.path.relative_to(ROOT)}:{node.lineno}: {internal}.{name} is private")
    return findings


def long_modules(folders=PRODUCT + ("tests", "benchmarks")) -> list[str]:
    out = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            n = len(path.read_text().splitlines())
            if n > MAX_MODULE_LINES:
                out.append(f"{path.relative_to(ROOT)}: {n} lines")
    return out


def long_functions(modules: dict[str, Module]) -> list[str]:
    out = []
    for m in modules.values():
        for node in ast.walk(m.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - first + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{m.path.relative_to(ROOT)}:{node.lineno}: {node.name} is {n} lines")
    return out


def layer(name: str) -> int:
    """The rank of a ternsearch module in LAYERS (its subpackage's); trainables modules rank below them all."""
    if not name.startswith("ternsearch"):
        return -1
    parts = name.split(".")
    return max(LAYERS.index(".".join(parts[:n])) for n in (1, 2) if ".".join(parts[:n]) in LAYERS)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} imports {b}" for a in graph for b in graph[a] if layer(b) > layer(a))


def _modules():
    modules = load_modules()
    analyse(modules)
    return modules


def test_no_import_cycles():
    assert cycles(edges(_modules())) == []


def test_function_local_imports_only_defer_heavy_libraries():
    assert local_import_findings(_modules()) == []


def test_no_private_names_imported_across_subpackages():
    assert private_import_findings(_modules()) == []


def test_modules_and_functions_fit_a_screen():
    assert long_modules() == []
    assert long_functions(_modules()) == []


def test_dependencies_run_one_way():
    """errors < spec < results < tracking < report < run < cli; trainables never imports ternsearch."""
    assert upward_imports(edges(_modules())) == []


def test_the_checker_sees_a_cycle_and_a_private_import():
    """The rules above can fail: a made-up pair of modules that break them is caught."""
    fake = {}
    for name, code in {"pkg.a.x": "def f():\n    from pkg.b.y import _g\n",
                       "pkg.b.y": "from pkg.a.x import f\ndef _g():\n    pass\n"}.items():
        fake[name] = Module(name, ROOT / (name.replace(".", "/") + ".py"), ast.parse(code), code.splitlines(), False)
    analyse(fake)
    assert cycles(edges(fake)) == [["pkg.a.x", "pkg.b.y"]]
    assert len(private_import_findings(fake)) == 1
    assert len(local_import_findings(fake)) == 1


if __name__ == "__main__":
    mods = _modules()
    for title, rows in [("cycles", [" <-> ".join(c) for c in cycles(edges(mods))]),
                        ("function-local imports", local_import_findings(mods)),
                        ("private imports", private_import_findings(mods)),
                        ("upward imports", upward_imports(edges(mods))),
                        ("long modules", long_modules()), ("long functions", long_functions(mods))]:
        print(f"## {title}: {len(rows)}")
        print("\n".join(rows))
