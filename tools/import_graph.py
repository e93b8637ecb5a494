"""genlab's import graph: layers, cycles, imports hidden inside functions, long files (issue 11).

    python tools/import_graph.py            # a summary of src/genlab
    python tools/import_graph.py --verbose  # plus every cycle, hidden import and layer violation

It reads the sources with ``ast`` and imports nothing, so it runs without the package's dependencies. The
layers (each may import only itself and the ones below it):

1. models   — the flat remote-code bundle that travels with a checkpoint;
2. io       — data, tokenizers, run directories, the Hub, processes;
3. trainers — one recipe per system, ``train_<system>(config) -> RunDir``;
4. bench    — measures run directories, writes benchmark JSON;
5. apps     — the command line, the demo, the report, model cards.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

LAYERS = ("models", "io", "trainers", "bench", "apps")
IO_MODULES = {"clouds", "data", "tokenization", "qwen2_tokenizer", "runs", "hub", "hub_server", "distributed", "presets",
              "timing", "convert_smollm2", "testing", "metrics", "edits", "spelling"}
APPS_MODULES = {"cli", "demo", "report", "hub_cards", "prepare", "app"}
BENCH_MODULES = {"bench", "probe"}
LONG_FILE_LINES = 500


def layer_of(module: str) -> str:
    """The layer of ``genlab.x.y`` (``genlab`` itself, the registration of the models, counts as models)."""
    parts = module.split(".")[1:]
    head = parts[0] if parts else ""
    if head == "trainers":
        return head
    if head in BENCH_MODULES:
        return "bench"
    if head in APPS_MODULES:
        return "apps"
    if head in IO_MODULES:
        return "io"
    return "models"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """Absolute names a ``from … import …`` refers to (the module, and each name as a possible submodule)."""
    if node.level:
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]


def dynamic_targets(node: ast.Call, files: dict) -> set[str]:
    """``importlib.import_module("genlab.x")`` or ``(f"genlab.bench.{system}")``: the modules it can reach."""
    func = node.func
    if not (isinstance(func, ast.Attribute) and func.attr == "import_module" and node.args):
        return set()
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return {arg.value} & set(files)
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = arg.values[0].value
        return {m for m in files if m.startswith(prefix) and m != prefix.rstrip(".")}
    return set()


def scan(root: Path) -> dict:
    """Per module: the genlab modules it imports (``importlib`` calls included), how many imports sit inside
    functions (of genlab modules, and of any module), its line count."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    info = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imports, hidden, hidden_any = set(), 0, 0
        function_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                          for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                imports |= dynamic_targets(node, files) - {module}
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = resolve(module, path.name == "__init__.py", node)
            else:
                continue
            targets = {n for n in names if n in files and n != module}
            if id(node) in function_nodes:
                hidden_any += 1
                hidden += bool(targets)
            imports |= targets
        info[module] = {"imports": imports, "hidden": hidden, "hidden_any": hidden_any, "lines": len(path.read_text(encoding="utf-8").splitlines())}
    return info


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def layer_violations(info: dict) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a module imports one of a higher layer."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return sorted((m, t) for m, d in info.items() for t in d["imports"]
                  if t != "genlab" and rank[layer_of(t)] > rank[layer_of(m)])


def summary(root: Path) -> dict:
    info = scan(root)
    graph = {m: {t for t in d["imports"] if t != "genlab"} for m, d in info.items()}
    found = cycles(graph)
    return {
        "modules": len(info),
        "modules_in_cycles": sum(len(c) for c in found),
        "cycles": found,
        "imports_inside_functions": sum(d["hidden"] for d in info.values()),
        "any_imports_inside_functions": sum(d["hidden_any"] for d in info.values()),
        "hidden_by_module": {m: d["hidden"] for m, d in info.items() if d["hidden"]},
        "files_over_500_lines": sorted(m for m, d in info.items() if d["lines"] > LONG_FILE_LINES),
        "layer_violations": layer_violations(info),
        "layers": {layer: sorted(m for m in info if layer_of(m) == layer) for layer in LAYERS},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1] / "src" / "genlab"))
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    result = summary(Path(args.root))
    print(f"modules: {result['modules']}")
    print(f"modules in import cycles: {result['modules_in_cycles']} ({len(result['cycles'])} cycles)")
    print(f"imports inside functions: {result['any_imports_inside_functions']} "
          f"({result['imports_inside_functions']} of genlab modules)")
    print(f"files over {LONG_FILE_LINES} lines: {len(result['files_over_500_lines'])} {result['files_over_500_lines']}")
    print(f"layer violations: {len(result['layer_violations'])}")
    if args.verbose:
        for cycle in result["cycles"]:
            print("cycle:", " ".join(cycle))
        for module, count in sorted(result["hidden_by_module"].items()):
            print(f"hidden imports: {module}: {count}")
        for importer, imported in result["layer_violations"]:
            print(f"violation: {importer} ({layer_of(importer)}) imports {imported} ({layer_of(imported)})")
        for layer, modules in result["layers"].items():
            print(f"{layer}: {' '.join(modules)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
