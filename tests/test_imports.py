"""The package's import graph: no two modules of embdistill import each other.

Read with ``ast`` from the source, not by importing: function-level imports count
(a lazy import still ties two modules together), ``if TYPE_CHECKING:`` blocks do not
(they never run).
"""
from __future__ import annotations

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "embdistill"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``src/embdistill/search/query.py`` -> ``embdistill.search.query``; a package is its ``__init__``."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth (functions, methods, try blocks) outside ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def imported_modules(path: Path, modules: set[str], root: Path = PACKAGE) -> set[str]:
    """The package's modules that ``path`` imports directly: ``from a.b import c`` is ``a.b.c`` when that
    is a module, else ``a.b``; relative imports are resolved against ``path``'s package."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {t for t in targets if t in modules and t != name}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    return {module_name(p, root): imported_modules(p, modules, root) for p in paths}


def mutual_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets if a < b and a in graph.get(b, set()))


def test_the_graph_reader_sees_lazy_relative_and_aliased_imports(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from .b import thing\n")
    (root / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import C\n"
        "def f():\n    from pkg import sub as s\n    return s\n"
    )
    (root / "sub" / "b.py").write_text("class K:\n    def m(self):\n        import pkg.a\n\nthing = 1\n")
    (root / "c.py").write_text("from . import a\nfrom .sub.b import thing\n")
    graph = import_graph(root)
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.sub"},  # the lazy import; not pkg.c, which only a type checker reads
        "pkg.c": {"pkg.a", "pkg.sub.b"},
        "pkg.sub": {"pkg.sub.b"},
        "pkg.sub.b": {"pkg.a"},
    }
    assert mutual_imports(graph) == []
    (root / "a.py").write_text("def f():\n    from .c import x\n")
    assert mutual_imports(import_graph(root)) == [("pkg.a", "pkg.c")]


def test_no_two_modules_of_embdistill_import_each_other() -> None:
    graph = import_graph()
    assert {"embdistill.deploy.export", "embdistill.deploy.quantize", "embdistill.data.transforms"} <= graph.keys()
    assert "embdistill.deploy.quantize" in graph["embdistill.deploy.export"]  # the graph is real: export calls quantize lazily
    pairs = mutual_imports(graph)
    assert pairs == [], "modules that import each other: " + "; ".join(f"{a} <-> {b}" for a, b in pairs)


def test_the_evaluation_transform_lives_in_data_transforms() -> None:
    """export and quantize both use it and neither owns it; export still re-exports it for old callers."""
    import torch
    from PIL import Image

    from embdistill.deploy import export
    from embdistill.data.transforms import IMAGENET, build_transform, eval_transform

    graph = import_graph()
    assert "embdistill.data.transforms" in graph["embdistill.deploy.quantize"]
    assert "embdistill.deploy.export" not in graph["embdistill.deploy.quantize"]
    assert export.eval_transform is eval_transform
    meta = export.ExportMetadata(image_size=32, resize_size=40, mean=IMAGENET.mean, std=IMAGENET.std,
                                 embedding_dim=8, backbone="mobilenet_v1", pooling="avg")
    image = Image.fromarray(torch.arange(60 * 50 * 3).remainder(256).to(torch.uint8).reshape(50, 60, 3).numpy())
    got = eval_transform(meta)(image)
    assert got.shape == (3, 32, 32)
    assert torch.equal(got, build_transform(False, 32, IMAGENET, resize_ratio=40 / 32)(image))


# --------------------------------------------------------------------------- layers

# Lowest first. A module may import its own layer and the layers below, never one above: the parts
# (data, models, losses, evaluation) know nothing of the config, the config nothing of checkpoints or
# the engine, and none of those anything of the commands built on them. docs/architecture.md draws it.
LAYERS: tuple[tuple[str, ...], ...] = (
    # deploy/__init__.py imports nothing, so its two leaves stay leaves; its other modules are commands
    ("embdistill", "embdistill.atomic", "embdistill.deploy", "embdistill.deploy.choices",
     "embdistill.deploy.cpu_features"),
    ("embdistill.data", "embdistill.models", "embdistill.losses", "embdistill.evaluation"),
    ("embdistill.config",),
    ("embdistill.checkpoints", "embdistill.teacher_space"),
    ("embdistill.engine",),
    ("embdistill.report", "embdistill.deploy.export", "embdistill.deploy.quantize", "embdistill.deploy.commands",
     "embdistill.search", "embdistill.serve", "embdistill.demo", "embdistill.cli", "embdistill.__main__"),
)


def layer_of(module: str) -> int:
    """The layer of the longest entry of LAYERS that is ``module`` or a package holding it."""
    best, rank = "", -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, rank = name, i
    if rank < 0:
        raise AssertionError(f"{module} is in no layer of tests/test_imports.py LAYERS: add it")
    return rank


def with_parent_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing ``a.b.c`` runs ``a/b/__init__.py`` first: each import also reaches the packages above it."""
    full: dict[str, set[str]] = {}
    for module, targets in graph.items():
        reached = set(targets)
        for target in targets:
            parts = target.split(".")
            reached.update(".".join(parts[:i]) for i in range(2, len(parts)))
        full[module] = {t for t in reached if t in graph and t != module and not module.startswith(t + ".")}
    return full


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_the_layer_and_cycle_checks_see_what_they_should(tmp_path: Path) -> None:
    assert layer_of("embdistill.config.sections") == 2 and layer_of("embdistill.engine.train.loop") == 4
    assert layer_of("embdistill.data.imagefiles") == 1 and layer_of("embdistill") == 0
    assert layer_of("embdistill.deploy.choices") == 0 and layer_of("embdistill.deploy.export") == 5
    assert layer_of("embdistill.report.plots") == 5
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from pkg.sub import b\n")
    (root / "sub" / "b.py").write_text("def f():\n    from pkg import c\n")
    (root / "c.py").write_text("from pkg.sub import b\n")  # the mutual pair the other test also sees
    (root / "d.py").write_text("def f():\n    from pkg.sub.e import x\n")
    (root / "sub" / "e.py").write_text("x = 1\n")
    graph = with_parent_packages(import_graph(root))
    assert "pkg.sub" in graph["pkg.d"]  # importing pkg.sub.e runs pkg/sub/__init__.py
    assert import_cycles(graph) == [["pkg.c", "pkg.sub", "pkg.sub.b"]]


def test_no_module_imports_a_layer_above_its_own() -> None:
    graph = import_graph()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))
    assert upward == [], "imports into a higher layer: " + "; ".join(upward)


def test_nothing_below_the_config_imports_it() -> None:
    graph = import_graph()
    below = [m for m in graph if layer_of(m) < layer_of("embdistill.config")]
    assert {"embdistill.losses.objective", "embdistill.models.embedder", "embdistill.data.datasets"} <= set(below)
    reaching = sorted(f"{m} -> {t}" for m in below for t in graph[m] if t.startswith("embdistill.config"))
    assert reaching == [], "modules below the config that import it: " + "; ".join(reaching)


def test_the_package_has_no_import_cycle() -> None:
    """Not even through a lazy import or the package ``__init__`` an import runs first."""
    cycles = import_cycles(with_parent_packages(import_graph()))
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


# --------------------------------------------------------------------------- the benchmarks and the folders

BENCHMARKS = PACKAGE.parents[1] / "benchmarks"


def test_no_benchmark_script_imports_another_and_the_package_has_no_cycle() -> None:
    """What the scripts share is in benchmarks/common (benchmarks/README.md); a script is never imported by another."""
    graph = import_graph(BENCHMARKS)
    scripts = {m for m in graph if not m.startswith("benchmarks.common") and BENCHMARKS.joinpath(
        *m.split(".")[1:]).with_suffix(".py").is_file()}
    assert {"benchmarks.cub100_strong", "benchmarks.speed.bank_speed", "benchmarks.parity.int8_parity"} <= scripts
    reaching = sorted(f"{m} -> {t}" for m in graph for t in graph[m] if t in scripts)
    assert reaching == [], "benchmark scripts imported by another module: " + "; ".join(reaching)
    cycles = import_cycles(with_parent_packages(graph))
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_package_folder_holds_more_than_about_ten_modules() -> None:
    """A newcomer reads a folder at a glance (issue #32): split one that grows past this by concern."""
    crowded = {}
    for root in (PACKAGE, BENCHMARKS):
        for folder in [root, *(p for p in root.rglob("*") if p.is_dir() and (p / "__init__.py").is_file())]:
            modules = [p.name for p in folder.glob("*.py") if p.name != "__init__.py"]
            if len(modules) > 10:
                crowded[str(folder.relative_to(PACKAGE.parents[1]))] = len(modules)
    assert crowded == {}, f"folders of more than 10 modules: {crowded}"
