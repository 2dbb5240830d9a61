"""Every kernel of the cuda set, built exactly as it runs on a GPU, checked on the CPU.

What runs on a GPU is the cubin of ``_cache.build``: PTX from Numba's NVVM for the device's
``sm_XY`` (no link-time optimisation, never ``sm_XYa``), assembled by Numba's linker. Here the
same function builds it for compute capability 8.0 and 9.0 (no GPU needed: NVVM and nvJitLink
come with numba-cuda's CUDA 12 extra), in subprocesses without the simulator, and the tests read
the cubin itself (tests/_cubin.py): its SM, each kernel's parameter table, registers and stack
frame. The raw launch path flattens the arguments by hand; for every kernel the list it passes
is compared, value by value and size by size, with the list Numba's own dispatcher builds
(``_Kernel._prepare_args``, fed device arrays over fake pointers) and with the cubin's table.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest
from numba import types

from gpucnn.kernels.cuda_set import _abi, _registry

CCS = ((8, 0), (9, 0))
HERE = pathlib.Path(__file__).parent

WORKER = r"""
import ctypes, json, re, sys
import numpy as np
from numba import types
from numba.cuda.cudadrv.devicearray import DeviceNDArray
from numba.cuda.dispatcher import _Kernel
from gpucnn.kernels.cuda_set import _abi, _cache, _registry
sys.path.insert(0, sys.argv[2])
from _cubin import Cubin

cc = tuple(int(v) for v in sys.argv[1].split("."))


class FakeMemory:                     # what DeviceNDArray asks of its buffer: a pointer
    def __init__(self, ptr):
        self.device_ctypes_pointer = ctypes.c_void_p(ptr)


class NoExtensions:
    extensions = []


def numba_args(spec, host):
    # the list Numba's dispatcher hands to the driver's launch, for the same arrays
    out = []
    for t, a in zip(spec.argtypes, host):
        if isinstance(t, types.Array):
            a = DeviceNDArray(a.shape, a.strides, a.dtype, gpu_data=FakeMemory(a.ctypes.data))
        _Kernel._prepare_args(NoExtensions(), t, a, 0, [], out)
    # scalars come as ctypes values (their size is theirs); array fields as Python ints, which
    # the launch passes as 64-bit words
    return [(v.value, ctypes.sizeof(v)) if isinstance(v, ctypes._SimpleCData) else (int(v), 8)
            for v in out]


def raw_args(spec, host):
    flat = _abi.flatten_args(spec.argtypes, host)
    return [(v.item(), np.asarray(v).itemsize) for v in flat]


out = []
for spec in _registry.all_kernels():
    rec = {"name": spec.name}
    try:
        built = _cache.build(spec, cc)
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"[:2000]
        out.append(rec)
        continue
    ptx = built.ptx
    entry = re.search(r"\.entry\s+(\S+)\s*\((.*?)\)", ptx, re.S)
    rec["ptx_target"] = re.search(r"\.target\s+(\S+)", ptx).group(1)
    rec["ptx_params"] = re.findall(r"\.param\s+\.(\w+)", entry.group(2))
    rec["f64_ops"] = sorted(set(re.findall(r"\b[a-z]+(?:\.[a-z0-9]+)*\.f64\b", ptx)))
    rec["local_depot"] = bool(re.search(r"__local_depot", ptx))
    cub = Cubin(built.cubin)
    rec["sm"] = cub.sm
    rec["cubin_params"] = cub.params(built.entry)
    rec.update(cub.function_info(built.entry))
    host = [np.zeros(tuple(range(2, 2 + t.ndim)), dtype=str(t.dtype))
            if isinstance(t, types.Array) else 3 + k if isinstance(t, types.Integer) else 0.5 + k
            for k, t in enumerate(spec.argtypes, 1)]
    rec["numba_args"] = numba_args(spec, host)
    rec["raw_args"] = raw_args(spec, host)
    out.append(rec)
print("COMPILE-REPORT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def reports():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    procs = {cc: subprocess.Popen([sys.executable, "-c", WORKER, f"{cc[0]}.{cc[1]}", str(HERE)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
             for cc in CCS}
    out = {}
    for cc, p in procs.items():
        stdout, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, f"compile worker for cc {cc} failed:\n{stderr[-4000:]}"
        line = [ln for ln in stdout.splitlines() if ln.startswith("COMPILE-REPORT ")][-1]
        out[cc] = {r["name"]: r for r in json.loads(line[len("COMPILE-REPORT "):])}
    return out


def test_registry_lists_every_kernel_family():
    names = {s.name.split("[")[0] for s in _registry.all_kernels()}
    assert names == {
        "igemm_fwd", "igemm_bwd_input", "igemm_bwd_weight", "colsum", "act_colsum",
        "max_pool_fwd", "max_pool_bwd", "avg_pool_fwd", "avg_pool_bwd",
        "act_fwd", "act_bwd", "softmax_fwd", "softmax_bwd",
        "loss_ew_fwd", "loss_rows_fwd", "loss_ew_bwd", "loss_rows_bwd",
        "dropout", "sgd", "adam", "rmsprop", "multi_sgd", "multi_adam", "multi_rmsprop",
        "gemm_fwd", "gemm_bwd_input", "gemm_bwd_input_f", "gemm_bwd_input_s",
        "gemm_bwd_input_sf", "gemm_bwd_input_v", "gemm_bwd_input_vf", "gemm_bwd_input_vs",
        "gemm_bwd_input_vsf", "gemm_bwd_weight", "gemm_bwd_weight_f", "gemm_bwd_weight_v",
        "gemm_bwd_weight_vf",
        "tf32_fwd", "tf32_bwd_input", "tf32_bwd_input_s", "tf32_bwd_weight"}
    for spec in _registry.all_kernels():
        assert all(isinstance(t, (types.Array, types.Number)) for t in spec.argtypes), spec.name


@pytest.mark.parametrize("cc", CCS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
def test_every_kernel_builds_a_cubin_for_that_sm_without_local_memory(reports, cc):
    """Plain ``sm_XY`` (no architecture-specific 'a' target). No register block in local memory (no ``__local_depot`` in the PTX), and no float32
    kernel with a stack frame in the cubin (no spills). The linker assembles each kernel apart
    from the 64-bit division helpers it calls, and three float64 conv kernels, at the 128
    registers their launch bounds allow, keep 16-40 bytes of stack around those calls (seen
    here: 40 for the input gradient with the activation's gradient fused in, at sm_90; a
    standalone ``ptxas`` of the same PTX inlines them and needs none). float64 runs only for
    gradient checks: it is held to a small frame (64 bytes), not to zero."""
    names = [s.name for s in _registry.all_kernels()]
    assert sorted(reports[cc]) == sorted(names)
    failed = {n: r["error"] for n, r in reports[cc].items() if "error" in r}
    assert failed == {}, f"kernels that do not build for cc {cc}: {failed}"
    want = cc[0] * 10 + cc[1]
    for name, r in reports[cc].items():
        assert r["ptx_target"] == f"sm_{want}" and r["sm"] == want, name
        assert not r["local_depot"], name
        limit = 0 if "float32" in name else 64
        assert r["frame_bytes"] <= limit, (name, r["frame_bytes"])


def test_conv_tiles_fit_their_launch_bounds(reports):
    """The 256-thread conv tiles keep the registers within 65536 / (256 x blocks per SM)."""
    for spec in _registry.all_kernels():
        r = reports[(9, 0)][spec.name]
        assert 0 < r["registers"] <= 255, spec.name
        if spec.launch_bounds:
            threads, blocks = spec.launch_bounds
            assert r["registers"] <= 65536 // (threads * blocks), (spec.name, r["registers"])


def test_raw_arguments_match_numba_and_the_cubin(reports):
    """The cheap launch path passes what Numba's dispatcher would pass, slot for slot, and
    the cubin's parameter table has the same sizes at naturally aligned offsets."""
    size = {"u64": 8, "b64": 8, "s64": 8, "f64": 8, "u32": 4, "b32": 4, "s32": 4, "f32": 4}
    for spec in _registry.all_kernels():
        r = reports[(9, 0)][spec.name]
        assert r["raw_args"] == r["numba_args"], spec.name
        params = r["ptx_params"]
        assert params == _abi.flat_param_types(spec.argtypes), spec.name
        sizes = [s for _, s in r["raw_args"]]
        assert sizes == [size[p] for p in params], spec.name
        offset, table = 0, []
        for i, s in enumerate(sizes):
            offset = -(-offset // s) * s
            table.append([i, offset, s])
            offset += s
        assert r["cubin_params"] == table, spec.name


def test_float32_kernels_do_no_double_precision_math(reports):
    """A stray Python float literal would promote a float32 kernel to (slow) float64 math.
    Dropout is the one exception: its keep test u * 2**-32 >= rate is float64 by contract."""
    for name, r in reports[(9, 0)].items():
        if "float32" in name and not name.startswith("dropout"):
            assert r["f64_ops"] == [], f"{name} does float64 math: {r['f64_ops']}"


def test_kernels_are_only_made_by_registered_factories():
    """Importing the cuda set jits device functions only: every kernel is a KernelSpec from a
    registered factory, jitted by the launch paths (so all_kernels() lists it and the tests
    above build it). Checked at run time: ``cuda.jit`` recorded while the set is imported."""
    code = r"""
import json
from numba import cuda
real = cuda.jit
kernels = []
def recording(*args, **kw):
    if not kw.get("device", False):
        target = args[0] if args and callable(args[0]) else None
        kernels.append(getattr(target, "__qualname__", repr(args)[:80]))
    return real(*args, **kw)
cuda.jit = recording
from gpucnn.kernels.cuda_set import _abi, _registry
specs = _registry.all_kernels()
print("JIT " + json.dumps({"kernels": kernels, "specs": len(specs)}))
"""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("JIT ")][-1][4:])
    assert out["kernels"] == [] and out["specs"] > 40
