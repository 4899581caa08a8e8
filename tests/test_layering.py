"""Data flows one way: model + recipe -> graph -> export -> runtime -> the tools -> the CLI.

Walks every import of the package (lazy ones inside functions included; annotation-only ones
under `if TYPE_CHECKING:` excluded, they run nothing) and fails on an import cycle, on an import
of a higher layer, and on one tool importing another (shared code goes down a layer instead).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vtpexport"

# Lowest first; a module may import its own layer and the ones below. Prefixes name packages.
LAYERS = [
    ("base", ["vtpexport", "errors", "files", "schema", "safety", "progress", "workspace"]),
    ("graph and methods", ["graph.", "pruning.", "recipe_schema", "recipe"]),
    ("models", ["models.", "flops", "dataset", "devices"]),
    ("export", ["export."]),
    ("runtime", ["runtime."]),
    ("views and serving", ["viz", "serving."]),
    ("tools", ["calibrate", "eval", "verify", "bench", "shipped_recipes", "zoo."]),
    ("cli", ["cli_args", "cli"]),
]
TOOLS = ("calibrate", "eval", "verify", "bench", "shipped_recipes")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    short = module.removeprefix("vtpexport.") if module != "vtpexport" else module
    for index, (_, members) in enumerate(LAYERS):
        if any(short.startswith(m) or short == m[:-1] if m.endswith(".") else short == m for m in members):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports when it runs."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and ast.unparse(branch.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for statement in branch.body
        for node in ast.walk(statement)
    }
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            candidates = [f"{stem}.{alias.name}" for alias in node.names] + [stem]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
                break
    return targets


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: runtime_imports(path, set(paths)) for name, path in paths.items()}


def test_every_module_is_in_a_layer():
    for module in import_graph():
        layer(module)


def test_imports_point_down_and_tools_do_not_import_tools():
    wrong = []
    for module, targets in sorted(import_graph().items()):
        for target in sorted(targets):
            if target == "vtpexport":
                continue  # the package's __init__: the version string
            if layer(target) > layer(module):
                wrong.append(f"{module} -> {target} ({LAYERS[layer(module)][0]} imports {LAYERS[layer(target)][0]})")
            tool = target.removeprefix("vtpexport.")
            if tool in TOOLS and module.removeprefix("vtpexport.") in TOOLS:
                wrong.append(f"{module} -> {target} (a tool imports another tool)")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = import_graph()
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(" -> ".join(path[path.index(module) :] + [module]))
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not cycles, "\n".join(cycles)
