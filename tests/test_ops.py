"""Every op of the registry (tests/_ops.py) on every backend: the NumPy set against the plain-loop
references in float64 (and in float32, within float32 rounding), with the NumPy set's forced
algorithms as a second axis for the convolutions; the CUDA set against the NumPy set (in Numba's
simulator, or on a GPU with GPUCNN_TEST_REAL_GPU=1), every output poisoned before it is written;
and each public function's gradient against central differences in float64."""
import contextlib
import importlib

import numpy as np
import pytest

import gpucnn
import _reference
from _gradcheck import gradcheck
from _ops import OPS, grad_cases, kernel_cases
from gpucnn.kernels import CONTRACT, load_set

N = load_set("numpy")
C = load_set("cuda")

# The NumPy set's conv methods and block sizes, forced (each with its edge: one-image or
# one-row blocks, several-image blocks with a partial last one, parts on two threads).
CONV_CONFIGS = {
    "default": {},
    "im2col-tiny-blocks-scatter": dict(forward_method="im2col", dx_method="scatter",
                                       col_block_bytes=600, col_min_rows=1,
                                       border_min_saving=2.0, scatter_block_bytes=1),
    "im2col-mid-blocks-gather-2threads": dict(forward_method="im2col", dx_method="gather",
                                              col_block_bytes=5000, col_min_rows=1,
                                              border_min_saving=2.0, threads=2),
    "border-classes-tiny-blocks-gather": dict(forward_method="im2col", dx_method="gather",
                                              col_block_bytes=600, col_min_rows=1,
                                              border_min_saving=0.0,
                                              border_many_classes_min_work=0),
    "border-classes-mid-blocks-2threads": dict(forward_method="im2col", dx_method="gather",
                                               col_block_bytes=5000, col_min_rows=1,
                                               border_min_saving=0.0,
                                               border_many_classes_min_work=0, threads=2),
    "shifted-gather-2threads": dict(forward_method="shifted", dx_method="gather",
                                    shift_block_bytes=3000, threads=2),
    "rowgather-1-image-blocks-2threads": dict(dx_method="rowgather", col_block_bytes=1,
                                              col_min_rows=1, wide_min_rows=1, threads=2),
    "shifted-1-image-blocks-scatter": dict(forward_method="shifted", dx_method="scatter",
                                           shift_block_bytes=1, scatter_block_bytes=2000),
}
CONV_KERNELS = ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight")


@contextlib.contextmanager
def numpy_config(name):
    settings = dict(CONV_CONFIGS[name])
    threads = settings.pop("threads", None)
    if threads:
        settings["min_parallel_flops"] = 0
    with N.num_threads(threads or N.get_num_threads()), N.tuning(**settings):
        yield


def as_dtype(v, dtype):
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return v.astype(dtype)
    return v


def fresh(args):
    """Copies of the array arguments (an update changes its arguments in place)."""
    return [a.copy() if isinstance(a, np.ndarray) else a for a in args]


def run(kset, name, kernel, args):
    """The kernel's outputs as a tuple (the in-place arguments for an update)."""
    out = getattr(kset, name)(*args)
    if kernel.in_place:
        assert out is None, f"{name} returns {out!r}; an update returns None"
        return tuple(args[i] for i in kernel.in_place)
    return out if isinstance(out, tuple) else (out,)


def dirty_heap(shapes):
    """Free NaN-filled blocks of the outputs' shapes, so that the next allocations of those
    sizes likely reuse them: an output cell a NumPy kernel forgets to write reads NaN, not a
    lucky zero."""
    for shape in shapes:
        junk = np.full(shape, np.nan)
        del junk


# ------------------------------------------------------------------------------ the registry

def resolve(path):
    """The object a dotted path names: attributes from the top package down, a submodule
    imported where no attribute has the name (so ``gpucnn.functional.dense`` is the function
    the package exports, not its module)."""
    parts = path.split(".")
    obj = importlib.import_module(parts[0])
    for i, attr in enumerate(parts[1:], 1):
        if not hasattr(obj, attr):
            importlib.import_module(".".join(parts[:i + 1]))
        obj = getattr(obj, attr)
    return obj


def test_every_contract_function_has_an_entry_and_each_entry_resolves():
    covered = {name for op in OPS for name in op.kernels}
    assert covered == set(CONTRACT) - {"xp", "asarray", "to_host"}
    for op in OPS:
        assert callable(resolve(op.public)), op.public
        if op.backward:                 # a module path, then the class
            module, _, cls = op.backward.rpartition(".")
            assert issubclass(getattr(importlib.import_module(module), cls), gpucnn.Function), \
                op.backward
        for name in op.kernels:
            assert callable(getattr(N, name)) and callable(getattr(C, name)), name


# ------------------------------------------------------------------------------ NumPy vs loops

NUMPY = kernel_cases(with_ref=True)


@pytest.mark.parametrize("case", NUMPY, ids=[c[0] for c in NUMPY])
def test_numpy_kernels_match_the_references(case, rng):
    _, op, name, kernel, sample = case
    configs = CONV_CONFIGS if name in CONV_KERNELS else {"default": {}}
    for config in configs:
        inputs = sample.make(rng)
        want = kernel.ref(inputs)
        with numpy_config(config):
            dirty_heap([np.shape(w) for w in want])
            got = run(N, name, kernel, fresh(kernel.call(inputs)))
            got32 = run(N, name, kernel, [as_dtype(a, np.float32) for a in kernel.call(inputs)])
        assert len(got) == len(want), name
        for i, (g, w) in enumerate(zip(got, want)):
            where = f"{name} output {i}, {config}"
            if w is None:                   # an absent slot (SGD without momentum)
                assert g is None, where
                continue
            if np.asarray(w).dtype.kind in "iu" or kernel.tol == 0.0:
                np.testing.assert_array_equal(g, w, err_msg=where)
            else:
                assert g.dtype == np.float64, where
                np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10, err_msg=where)
        for i, (g, w) in enumerate(zip(got32, want)):
            if w is not None and np.asarray(w).dtype.kind == "f" and name != "dropout_mask":
                assert g.dtype == np.float32, f"{name} output {i}: float32 in, {g.dtype} out"
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4,
                                           err_msg=f"{name} output {i} (float32), {config}")


# ------------------------------------------------------------------------------ CUDA vs NumPy

CUDA = kernel_cases(only_cuda=True)


@pytest.mark.parametrize("case", CUDA, ids=[c[0] for c in CUDA])
def test_cuda_kernels_match_numpy(case, rng, poisoned_small_launches):
    _, op, name, kernel, sample = case
    inputs = sample.make(rng)
    args = [as_dtype(a, np.float32) for a in kernel.call(inputs)]
    if name == "dropout_mask":
        args[-1] = np.float32
    c_args = [C.asarray(a.copy()) if isinstance(a, np.ndarray) else a for a in args]
    want = run(N, name, kernel, fresh(args))
    got = run(C, name, kernel, c_args)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            continue
        assert C.to_host(g).dtype == w.dtype, f"{name}: output {i} dtype"
        if w.dtype.kind in "iu" or kernel.tol == 0.0:
            assert np.array_equal(C.to_host(g), w, equal_nan=True), f"{name}: output {i}"
        else:
            err = _reference.rel_err(C.to_host(g), w)
            assert err < kernel.tol, f"{name}: output {i} relative error {err:.2e}"
    if kernel.in_place:
        assert np.array_equal(C.to_host(c_args[1]), args[1], equal_nan=True), \
            f"{name}: g was modified"


# ------------------------------------------------------------------------------ gradients

GRADS = grad_cases()


@pytest.mark.parametrize("case", GRADS, ids=[c[0] for c in GRADS])
def test_gradients_match_finite_differences(case, rng, numpy_backend):
    _, op, sample = case
    fn, arrays = op.grad(sample.make(rng))
    gradcheck(fn, *arrays)
