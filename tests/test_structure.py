"""The shape of the source tree, read from the files (nothing is imported).

- No import circle among the modules of ``gpucnn/`` and ``kernels/`` (installed as
  ``gpucnn.kernels``), counting imports made inside functions too: a module that needs another
  only at call time still cannot be read, moved or tested without it.
- No file of ``gpucnn/`` over ``MAX_LINES`` lines: a file that long does several jobs.
- Nothing in ``gpucnn/`` imports the cuda set's modules, CuPy or Numba's CUDA target: code above
  the kernels asks the kernel contract (``gpucnn.kernels.has``) and the backend for what it
  needs; the measurement tools of ``bench/`` too (the set's ``instruments`` capability).
"""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_LINES = 450

GPU_MODULES = ("gpucnn.kernels.cuda_set", "cupy", "cupyx", "numba.cuda")


def _sources():
    """(module name, path) of every module of gpucnn/ and kernels/."""
    for top, prefix in (("gpucnn", "gpucnn"), ("kernels", "gpucnn.kernels")):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT / top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join([prefix, *parts]), path


MODULES = dict(_sources())


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str, source: str, package: bool = False):
    """Every module name imported anywhere in ``source`` (functions included), as written, with
    relative imports resolved; ``from a import b`` gives ``a.b`` when that is a module of
    gpucnn, ``a`` otherwise (and ``a.b`` too outside gpucnn, where it may be a module)."""
    tree = ast.parse(source, name)
    package = name if package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:
                    yield sub
                else:   # a name from a module, or (outside gpucnn) maybe a submodule
                    yield base
                    if base not in MODULES:
                        yield sub


def _graph() -> dict:
    """module -> the gpucnn modules it imports."""
    return {name: sorted({m for m in _imports(name, path.read_text(), _is_package(name))
                          if m in MODULES and m != name})
            for name, path in MODULES.items()}


def _cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_sees_function_level_and_relative_imports():
    source = ("from .._geometry import out_size\nfrom . import _util\n"
              "from gpucnn import backend\nfrom gpucnn.models import Model\n"
              "def f():\n    import gpucnn.layers.core\n")
    found = set(_imports("gpucnn.kernels.numpy_set.pool", source))
    assert {"gpucnn.kernels._geometry", "gpucnn.kernels.numpy_set._util", "gpucnn.backend",
            "gpucnn.models", "gpucnn.layers.core"} <= found
    assert "gpucnn" not in found        # ``from gpucnn import backend`` needs backend alone
    assert "gpucnn.kernels" in _graph()["gpucnn.backend"]                         # a package
    looped = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert _cycles(looped) == [["a", "b", "c"]]


def test_no_import_circle():
    found = _cycles(_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def _lines(rel: str) -> int:
    return len((ROOT / rel).read_text().splitlines())


def test_no_long_files():
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "gpucnn").rglob("*.py"))
    long = {f: _lines(f) for f in files if _lines(f) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by job): {long}"


def _gpu_imports(name: str, source: str) -> list:
    return sorted({m for m in _imports(name, source)
                   if any(m == g or m.startswith(g + ".") for g in GPU_MODULES)})


def _gpu_imports_of(rel: str) -> list:
    name = {str(p.relative_to(ROOT)): n for n, p in MODULES.items()}[rel]
    return _gpu_imports(name, (ROOT / rel).read_text())


def _above_the_kernels() -> list:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "gpucnn").rglob("*.py"))


def test_the_gpu_import_check_sees_every_spelling():
    source = ("import numpy\nfrom numba import cuda\nimport cupyx.scipy\n"
              "def f():\n    from gpucnn.kernels.cuda_set import _launch\n    import cupy as cp\n")
    assert _gpu_imports("gpucnn.x", source) == [
        "cupy", "cupyx.scipy", "gpucnn.kernels.cuda_set._launch", "numba.cuda"]


def test_nothing_above_the_kernels_imports_gpu_libraries():
    found = {rel: _gpu_imports_of(rel) for rel in _above_the_kernels()}
    found = {rel: mods for rel, mods in found.items() if mods}
    assert "gpucnn/bench/sass.py" in _above_the_kernels()      # the tools are checked too
    assert not found, ("ask the kernel set through the contract (gpucnn.kernels.has, the "
                       f"set's instruments() in bench/) instead of importing: {found}")


