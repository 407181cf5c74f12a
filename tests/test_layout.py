"""The package's shape, measured from its own imports (the README's Layout section): no import
cycle among facekd modules (function-level imports included), a layer never imports a layer
listed after it, and only a few modules sit loose at the top of ``facekd/``. Measured from the
code too: no file and no function grows past the size limits (issue #17)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "facekd"
#: lowest first, as in the README; deploy and search use each other (one layer)
LAYERS = ("types", "config", "runtime", "data", "models", "evaluation", "selection", "losses",
          "teachers", "engine", ("deploy", "search"), "demo", "cli")  # fmt: skip
#: lines of a module (its newline count) and of a function (``end_lineno - lineno + 1`` of its
#: ``def``: signature, docstring and body; decorators not counted)
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 80


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: facekd modules it imports}``, at any depth of its code."""

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in mods:
                return ".".join(parts[:i])
        return None

    edges = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("facekd"):
                names = [resolve(f"{node.module}.{a.name}") or resolve(node.module)
                         for a in node.names]  # fmt: skip
            elif isinstance(node, ast.Import):
                names = [resolve(a.name) for a in node.names if a.name.startswith("facekd")]
            edges[m] |= {n for n in names if n and n != m}
    return edges


def _layer(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else None
    for i, layer in enumerate(LAYERS):
        if top == layer or (isinstance(layer, tuple) and top in layer):
            return i
    return None


def test_no_import_cycles():
    edges = _imports(_modules())
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            assert state.get(n) != 1, "import cycle: " + " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])


def test_lower_layers_never_import_higher_ones():
    upward = [
        f"{m} -> {n}"
        for m, targets in _imports(_modules()).items()
        for n in targets
        if _layer(m) is not None and _layer(n) is not None and _layer(n) > _layer(m)
    ]
    assert upward == []


def test_few_modules_loose_at_the_top():
    top = ("__init__.py", "__main__.py")
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in top)
    assert len(loose) <= 5, loose
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    named = {x for layer in LAYERS for x in (layer if isinstance(layer, tuple) else (layer,))}
    assert packages <= named, f"a package missing from the README's layers: {packages - named}"


def _functions(tree: ast.AST, prefix: str = ""):
    """``(qualified name, node)`` of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                yield name, node
            yield from _functions(node, f"{name}.")
        else:
            yield from _functions(node, prefix)


def test_files_and_functions_stay_within_the_size_limits():
    offenders = []
    for f in sorted(PACKAGE.rglob("*.py")):
        src, where = f.read_text(), f.relative_to(PACKAGE.parent).as_posix()
        lines = src.count("\n")
        if lines > MAX_FILE_LINES:
            offenders.append(f"{where}: {lines} lines (a file: at most {MAX_FILE_LINES})")
        for name, node in _functions(ast.parse(src)):
            size = node.end_lineno - node.lineno + 1
            if size > MAX_FUNCTION_LINES:
                limit = f"a function: at most {MAX_FUNCTION_LINES}"
                offenders.append(f"{where}:{node.lineno} {name}: {size} lines ({limit})")
    assert not offenders, "split by concept into named helpers or modules:\n" + "\n".join(offenders)
