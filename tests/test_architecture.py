"""The house plan holds: imports (read with `ast`, module-level and inside functions) form no circle and never
point up the layer order that ARCHITECTURE.md states; no module is long without saying why; no function is long.

The layer order is parsed from ARCHITECTURE.md's line "Layer order, lowest first: a/b -> c -> ...", so the
document and this test cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "elalora_auto"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_MODULE_MARK = "# long module:"  # within the first lines of a module over the limit, followed by the reason


def module_name(path: Path) -> str:
    """elalora_auto/search/study.py -> elalora_auto.search.study (from the last `elalora_auto` folder up)."""
    parts = path.with_suffix("").parts
    parts = parts[len(parts) - 1 - parts[::-1].index(PACKAGE.name):]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(path): path for path in sorted(package.rglob("*.py"))}


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every package module `path` imports, at any depth of the file (functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule itself
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    # Importing a.b.c runs a.b's __init__ first: from outside a.b that is an import of a.b as well (the root
    # package aside: it is everyone's parent and imports nothing at import time).
    for name in list(found):
        parts = name.split(".")
        for cut in range(2, len(parts)):
            parent = ".".join(parts[:cut])
            if parent in modules and not module_name(path).startswith(parent + "."):
                found.add(parent)
    return {name for name in found if name in modules}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = package_modules(package)
    return {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}


def layer_order(architecture: Path = ROOT / "ARCHITECTURE.md") -> list[set[str]]:
    """The layers, lowest first, from the document's "Layer order, lowest first:" line."""
    match = re.search(r"^Layer order, lowest first: (.+)$", architecture.read_text(), re.MULTILINE)
    assert match, f"{architecture.name} must state the layer order in one line 'Layer order, lowest first: a -> b'"
    return [{name.strip(" `.") for name in layer.split("/")} for layer in match.group(1).split("->")]


def layer_of(module: str, layers: list[set[str]]) -> int:
    """Index of the module's layer: by its first part under the package; the package itself is the method's
    public face (it re-exports elalora_auto.method)."""
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "method"
    for index, names in enumerate(layers):
        if key in names:
            return index
    raise AssertionError(f"{module}: its layer {key!r} is not in ARCHITECTURE.md's layer order")


def upward_imports(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    return sorted(f"{src} -> {dst}" for src, targets in graph.items() for dst in targets
                  if layer_of(dst, layers) > layer_of(src, layers))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), empty when the graph is a DAG."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def long_modules(package: Path = PACKAGE) -> list[str]:
    out = []
    for name, path in package_modules(package).items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES and not any(line.startswith(LONG_MODULE_MARK) for line in lines[:30]):
            out.append(f"{name}: {len(lines)} lines")
    return out


def long_functions(package: Path = PACKAGE) -> list[str]:
    out = []
    for name, path in package_modules(package).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{name}.{node.name}: {length} lines")
    return out


def test_the_layer_order_names_every_part_of_the_package() -> None:
    layers = layer_order()
    for module in package_modules():
        layer_of(module, layers)  # raises for a part the document does not place


def test_no_import_points_up_the_layer_order() -> None:
    assert upward_imports(import_graph(), layer_order()) == []


def test_no_import_circle() -> None:
    assert circles(import_graph()) == []


def test_no_long_module_without_a_reason_and_no_long_function() -> None:
    assert long_modules() == []
    assert long_functions() == []


def test_the_checks_catch_what_they_claim(tmp_path: Path) -> None:
    """The same checks on a small made-up package with an upward import, a circle and a long function."""
    root = tmp_path / "elalora_auto"
    (root / "search").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "search" / "__init__.py").write_text("")
    (root / "errors.py").write_text("def f():\n    from elalora_auto.search import worker\n")
    (root / "search" / "worker.py").write_text("from . import study\n")
    (root / "search" / "study.py").write_text("from elalora_auto.search.worker import x\n"
                                              "def g():\n" + "    pass\n" * MAX_FUNCTION_LINES)
    (root / "search" / "__init__.py").write_text("from elalora_auto.tracking import t\n")
    (root / "tracking.py").write_text("from elalora_auto.search.pareto import knee\n")
    (root / "search" / "pareto.py").write_text("")
    doc = tmp_path / "ARCHITECTURE.md"
    doc.write_text("Layer order, lowest first: errors -> method -> search -> tracking.\n")
    modules = {module_name(p) for p in root.rglob("*.py")}
    graph = {module_name(p): imports_of(p, modules) - {module_name(p)} for p in root.rglob("*.py")}
    assert graph["elalora_auto.errors"] == {"elalora_auto.search", "elalora_auto.search.worker"}
    assert upward_imports(graph, layer_order(doc)) == [
        "elalora_auto.errors -> elalora_auto.search", "elalora_auto.errors -> elalora_auto.search.worker",
        "elalora_auto.search -> elalora_auto.tracking"]
    # the circle through a package's __init__ (search -> tracking -> search.pareto, which runs search/__init__)
    assert circles(graph) == [["elalora_auto.search", "elalora_auto.tracking"],
                              ["elalora_auto.search.study", "elalora_auto.search.worker"]]
    assert long_functions(root) == [f"elalora_auto.search.study.g: {MAX_FUNCTION_LINES + 1} lines"]
    with pytest.raises(AssertionError, match="'tasks' is not in"):
        layer_of("elalora_auto.tasks.loaders", layer_order(doc))


def test_bench_readme_names_every_bench_script() -> None:
    """bench/README.md is the index a newcomer reads: a script it does not name is a question nobody can find."""
    index = (ROOT / "bench" / "README.md").read_text()
    missing = [path.name for path in sorted((ROOT / "bench").glob("*.py")) if f"`{path.name}`" not in index]
    assert not missing, f"bench/README.md does not name {missing}: add a row (question, results, BENCHMARKS section)"


# bench/ is a user of the package like any other: its scripts and their library (bench/common/) reach only public
# names, so a change inside the package never silently breaks a benchmark. Known exceptions, each with its issue
# (none today: gpu_check counts steps through run_trial's adapter_factory):
BENCH_PRIVATE_ALLOWED: set[str] = set()


def private_uses(path: Path) -> list[str]:
    """Every private name of elalora_auto the file reaches: a module or name with a leading underscore in an
    import, or an underscore attribute of a package module bound by an import (`trial._step`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bound: dict[str, str] = {}  # local name -> the package module it is bound to
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE.name:
                    found += [alias.name] * any(part.startswith("_") for part in alias.name.split("."))
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else PACKAGE.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PACKAGE.name:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if any(part.startswith("_") for part in full.split(".")):
                    found.append(full)
                bound[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            chain = attribute_chain(node.value)
            if chain and chain[0] in bound:
                found.append(".".join([bound[chain[0]], *chain[1:], node.attr]))
    return sorted(set(found))


def attribute_chain(node: ast.expr) -> list[str]:
    """`a.b.c` -> ['a', 'b', 'c']; [] for anything that is not a plain dotted name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    return [node.id, *parts] if isinstance(node, ast.Name) else []


def bench_private_uses(bench: Path = ROOT / "bench") -> list[str]:
    return [f"{path.relative_to(bench)}: {name}" for path in sorted(bench.rglob("*.py"))
            for name in private_uses(path)]


def test_bench_reaches_only_public_names_of_the_package() -> None:
    found = set(bench_private_uses())
    assert found - BENCH_PRIVATE_ALLOWED == set(), "bench/ reaches private names: use (or add) a public one"
    assert BENCH_PRIVATE_ALLOWED - found == set(), "an allowed private use is gone: drop it from the allow-list"


def test_bench_modules_keep_the_size_limits() -> None:
    """The house rules of the package hold for bench/ too: a script over 400 lines holds two questions."""
    bench = ROOT / "bench"
    paths = sorted(bench.rglob("*.py"))
    assert [f"{p.relative_to(bench)}: {n} lines" for p in paths
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES] == []
    assert [f"{p.relative_to(bench)}:{node.name}: {node.end_lineno - node.lineno + 1} lines" for p in paths
            for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES] == []


def test_the_bench_check_catches_private_names(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(
        "import elalora_auto.trial as trial\nfrom elalora_auto.search import _hidden, run_search\n"
        "from elalora_auto import _private_module\nimport elalora_auto\n"
        "def f():\n    trial._step = None\n    elalora_auto.search._x()\n    run_search._cache\n    trial.__name__\n")
    assert bench_private_uses(tmp_path) == [
        "script.py: elalora_auto._private_module", "script.py: elalora_auto.search._hidden",
        "script.py: elalora_auto.search._x", "script.py: elalora_auto.search.run_search._cache",
        "script.py: elalora_auto.trial._step"]
