"""Every kernel of the cuda set compiles with Numba's real CUDA compiler (NVVM, from numba-cuda's
CUDA 12 toolkit extra; no GPU needed) to PTX for compute capability 8.0 and 9.0.

The simulator replaces the compiler, so the compilation runs in subprocesses (one per compute
capability, in parallel) with NUMBA_ENABLE_CUDASIM removed. The kernel list comes from the set's
own registry (``all_kernels()``); a source scan checks that no kernel bypasses the registry.
The PTX also checks the hand-flattened argument list of the cheap launch path against the
parameter list Numba really emits, and that float32 kernels do no double-precision math.
"""
import ast
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from numba import types

from gpucnn.kernels.cuda_set import _launch

CCS = ((8, 0), (9, 0))
SET_DIR = pathlib.Path(_launch.__file__).parent

WORKER = r"""
import importlib.util, json, os, re, subprocess, sys, tempfile
from numba import cuda
from gpucnn.kernels.cuda_set import _launch

cc = tuple(int(v) for v in sys.argv[1].split("."))
ptxas = None
if cc == (9, 0):  # ptxas ships with NVVM in nvidia-cuda-nvcc-cu12
    spec = importlib.util.find_spec("nvidia.cuda_nvcc")
    for d in (spec.submodule_search_locations if spec else []):
        if os.path.exists(os.path.join(d, "bin", "ptxas")):
            ptxas = os.path.join(d, "bin", "ptxas")
out = []
for spec in _launch.all_kernels():
    rec = {"name": spec.name}
    try:
        ptx, _ = cuda.compile_ptx(spec.pyfunc, spec.sig, cc=cc, launch_bounds=spec.launch_bounds)
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"[:2000]
    else:
        entry = re.search(r"\.entry\s+(\S+)\s*\((.*?)\)", ptx, re.S)
        rec["target"] = re.search(r"\.target\s+(\S+)", ptx).group(1)
        rec["params"] = re.findall(r"\.param\s+\.(\w+)", entry.group(2)) if entry else None
        rec["f64_ops"] = sorted(set(re.findall(r"\b[a-z]+(?:\.[a-z0-9]+)*\.f64\b", ptx)))
        rec["local_depot"] = bool(re.search(r"__local_depot", ptx))
        if ptxas:
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(ptx)
            r = subprocess.run([ptxas, "-v", f"-arch=sm_{cc[0]}{cc[1]}", f.name, "-o", os.devnull],
                               capture_output=True, text=True)
            os.unlink(f.name)
            regs = re.search(r"Used (\d+) registers", r.stderr)
            spill = re.findall(r"(\d+) bytes spill (?:stores|loads)", r.stderr)
            rec["ptxas"] = {"rc": r.returncode, "registers": int(regs.group(1)) if regs else None,
                            "spill_bytes": sum(map(int, spill)), "log": r.stderr[-500:]}
    out.append(rec)
if cc == (9, 0):  # the raw launch path's cubin: Numba's linker output, as bytes
    from numba.cuda.cudadrv import driver
    spec = _launch.all_kernels()[0]
    ptx, _ = cuda.compile_ptx(spec.pyfunc, spec.sig, cc=cc, launch_bounds=spec.launch_bounds)
    linker = driver._Linker(cc=cc)
    linker.add_ptx(ptx.encode())
    out.append({"name": "<cubin>", "head": list(_launch.cubin_bytes(linker.complete())[:4])})
print("PTX-REPORT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def reports():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    procs = {cc: subprocess.Popen([sys.executable, "-c", WORKER, f"{cc[0]}.{cc[1]}"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cc in CCS}
    out = {}
    for cc, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, f"PTX worker for cc {cc} failed:\n{stderr[-4000:]}"
        line = [ln for ln in stdout.splitlines() if ln.startswith("PTX-REPORT ")][-1]
        out[cc] = {r["name"]: r for r in json.loads(line[len("PTX-REPORT "):])}
    out["cubin"] = out[(9, 0)].pop("<cubin>")
    return out


def test_registry_lists_every_kernel_family():
    names = {s.name.split("[")[0] for s in _launch.all_kernels()}
    assert names == {
        "igemm_fwd", "igemm_bwd_input", "igemm_bwd_weight", "colsum",
        "max_pool_fwd", "max_pool_bwd", "avg_pool_fwd", "avg_pool_bwd",
        "act_fwd", "act_bwd", "softmax_fwd", "softmax_bwd", "xent_fwd", "xent_bwd",
        "dropout", "sgd", "adam", "rmsprop"}
    for spec in _launch.all_kernels():
        assert all(isinstance(t, (types.Array, types.Number)) for t in spec.argtypes), spec.name


@pytest.mark.parametrize("cc", CCS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
def test_every_kernel_compiles_to_ptx(reports, cc):
    names = [s.name for s in _launch.all_kernels()]
    assert sorted(reports[cc]) == sorted(names)
    failed = {n: r["error"] for n, r in reports[cc].items() if "error" in r}
    assert failed == {}, f"kernels that do not compile for cc {cc}: {failed}"
    assert {r["target"] for r in reports[cc].values()} == {f"sm_{cc[0]}{cc[1]}"}


def test_no_kernel_spills_its_register_block_to_local_memory(reports):
    spilled = [n for n, r in reports[(9, 0)].items() if r.get("local_depot")]
    assert spilled == []


def test_sm90_cubins_assemble_without_spills(reports):
    """ptxas (shipped with NVVM) assembles every kernel for sm_90: no register spills, and the
    256-thread conv tiles fit the blocks per SM their launch bounds ask for."""
    for name, r in reports[(9, 0)].items():
        info = r.get("ptxas")
        assert info is not None, "ptxas not found beside NVVM (nvidia-cuda-nvcc-cu12)"
        assert info["rc"] == 0, f"{name}: ptxas failed: {info['log']}"
        assert info["spill_bytes"] == 0, f"{name} spills registers: {info['log']}"
        blocks = re.search(r"/(\d+)\]$", name)
        if blocks:  # the conv tiles: registers within the launch bounds (256 threads per block)
            assert info["registers"] <= 65536 // (256 * int(blocks.group(1))), name


def test_numba_linker_gives_cubin_bytes(reports):
    """The raw path loads ``cubin_bytes(lib.get_cubin())`` into CuPy: an ELF image."""
    assert bytes(reports["cubin"]["head"]) == b"\x7fELF"


def test_raw_launch_abi_matches_the_ptx_parameters(reports):
    """The cheap launch path flattens arguments by hand: the PTX must agree, slot by slot."""
    size = {"u64": 8, "b64": 8, "s64": 8, "f64": 8, "u32": 4, "b32": 4, "s32": 4, "f32": 4}
    for spec in _launch.all_kernels():
        params = reports[(9, 0)][spec.name]["params"]
        assert params == _launch.flat_param_types(spec.argtypes), spec.name
        args = [np.zeros((2,) * t.ndim, dtype=str(t.dtype)) if isinstance(t, types.Array) else 1
                for t in spec.argtypes]
        flat = _launch.flatten_args(spec.argtypes, args)
        assert [np.asarray(v).itemsize for v in flat] == [size[p] for p in params], spec.name


def test_float32_kernels_do_no_double_precision_math(reports):
    """A stray Python float literal would promote a float32 kernel to (slow) float64 math.
    Dropout is the one exception: its keep test u * 2**-32 >= rate is float64 by contract."""
    for name, r in reports[(9, 0)].items():
        if "float32" in name and not name.startswith("dropout"):
            assert r["f64_ops"] == [], f"{name} does float64 math: {r['f64_ops']}"


def test_kernels_are_only_made_by_registered_factories():
    """Outside _launch.py, ``cuda.jit`` only makes device functions, and every ``KernelSpec`` is
    built inside a function decorated with ``@kernel_factory`` (so all_kernels() sees it)."""
    for path in sorted(SET_DIR.glob("*.py")):
        src = path.read_text()
        tree = ast.parse(src)
        if path.name != "_launch.py":
            for m in re.finditer(r"cuda\.jit\(([^)]*)\)", src):
                assert "device=True" in m.group(1), f"{path.name}: a kernel jitted outside a " \
                    f"factory: {m.group(0)}"
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            builds = any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "KernelSpec"
                         for n in ast.walk(fn))
            decorated = any(isinstance(d, ast.Call) and getattr(d.func, "id", None)
                            == "kernel_factory" for d in fn.decorator_list)
            if builds:
                assert decorated, f"{path.name}:{fn.name} builds a KernelSpec outside a factory"
