"""The backend switch, and the kernel contract under it.

The switch: each case runs in a fresh interpreter with Numba's simulator off, so that it sees
this machine as a user does (CI and developer machines have no GPU).

The contract, written once in ``gpucnn.kernels``: a third kernel set needs no change above the
kernels. A tiny set that forwards every contract function to the NumPy set (and counts the
calls), offering none of the optional capabilities, trains a model through the public API to the
same weights as the NumPy backend."""
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import gpucnn
from gpucnn import backend, kernels, layers, models, optimizers
from gpucnn.kernels import numpy_set


def _run(code, **env):
    e = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "GPUCNN_BACKEND")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          timeout=120)


# whether a fresh process (the simulator off) sees a usable NVIDIA GPU
GPU = _run("import gpucnn.kernels.cuda_set._probe as p; print(p.probe()[0])").stdout.strip() \
    == "True"


@pytest.mark.skipif(GPU, reason="this machine has a usable NVIDIA GPU")
def test_auto_chooses_numpy_without_a_gpu():
    r = _run("import gpucnn, json; print(gpucnn.get_backend()); print(json.dumps(gpucnn.backend_info()))")
    assert r.returncode == 0, r.stderr
    name, info = r.stdout.splitlines()[:2]
    info = json.loads(info)
    assert name == "numpy"
    assert info["backend"] == "numpy" and info["requested"] == "auto"
    assert "no usable GPU" in info["reason"] and info["cuda_available"] is False
    assert info["numpy"] and info["numba"]


@pytest.mark.skipif(GPU, reason="this machine has a usable NVIDIA GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    r = _run("import gpucnn; gpucnn.set_backend('cuda')")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: set_backend('cuda'): the CUDA backend cannot run here:")
    assert "set_backend('numpy')" in last
    assert "CuPy" in last or "device" in last  # names the missing part


@pytest.mark.skipif(GPU, reason="this machine has a usable NVIDIA GPU")
def test_env_variable_sets_the_start_value():
    r = _run("import gpucnn; print(gpucnn.get_backend(), gpucnn.backend_info()['requested'])",
             GPUCNN_BACKEND="numpy")
    assert r.stdout.split() == ["numpy", "numpy"], r.stderr
    r = _run("import gpucnn; gpucnn.get_backend()", GPUCNN_BACKEND="cuda")
    assert r.returncode != 0 and "RuntimeError: set_backend('cuda')" in r.stderr
    r = _run("import gpucnn; gpucnn.get_backend()", GPUCNN_BACKEND="tpu")
    assert r.returncode != 0 and "GPUCNN_BACKEND='tpu' is not a backend" in r.stderr


def test_unknown_name_is_rejected():
    with pytest.raises(ValueError, match=r"set_backend: unknown backend 'gpu'"):
        gpucnn.set_backend("gpu")


def test_simulator_backend_only_when_asked_for():
    # this test session runs with NUMBA_ENABLE_CUDASIM=1 (tests/conftest.py)
    assert gpucnn.set_backend("auto") == "numpy"
    assert "simulator" in gpucnn.backend_info()["reason"]
    assert gpucnn.set_backend("cuda") == "cuda"
    info = gpucnn.backend_info()
    assert info["backend"] == "cuda" and "simulator" in info["device"].lower()
    gpucnn.set_backend("numpy")


# -- the kernel contract ------------------------------------------------------------------------
def forwarding_set(calls):
    mod = types.ModuleType("tiny_set")
    for name in kernels.CONTRACT:
        target = getattr(numpy_set, name)
        if callable(target) and not isinstance(target, types.ModuleType):
            def fn(*args, _name=name, _target=target, **kw):
                calls[_name] = calls.get(_name, 0) + 1
                return _target(*args, **kw)
            setattr(mod, name, fn)
        else:
            setattr(mod, name, target)
    return mod


@pytest.fixture
def tiny_set():
    calls = {}
    kernels.register_set("tiny", forwarding_set(calls))
    try:
        yield calls
    finally:
        gpucnn.set_backend("numpy")
        kernels.unregister_set("tiny")


def train(backend_name, x, y):
    gpucnn.set_backend(backend_name)
    gpucnn.manual_seed(3)
    model = models.Sequential([
        layers.Conv2D(3, 3, activation="relu", padding="same", input_shape=(8, 8, 1)),
        layers.MaxPooling2D(), layers.Conv2D(4, 3, activation="tanh"),
        layers.AveragePooling2D(), layers.Flatten(), layers.Dropout(0.2),
        layers.Dense(3, activation="softmax")])
    model.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    return model.get_weights(), model.predict(x, verbose=0)


def test_a_third_kernel_set_trains_like_the_numpy_set(tiny_set, rng):
    x = rng.random((12, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    assert "tiny" in backend.names()
    got_w, got_p = train("tiny", x, y)
    assert backend.get_backend() == "tiny" and not backend.has("threads")
    want_w, want_p = train("numpy", x, y)
    for a, b in zip(got_w, want_w):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_p, want_p, rtol=1e-6, atol=1e-7)
    for name in ("conv2d_forward", "conv2d_backward_weight", "max_pool_backward",
                 "avg_pool_forward", "dropout_mask", "adam_update", "loss_forward",
                 "loss_backward"):
        assert tiny_set.get(name, 0) > 0, name


def test_a_set_that_breaks_the_contract_is_refused():
    mod = forwarding_set({})
    del mod.conv2d_backward_input
    mod.CAPABILITIES = ("threads", "teleport")
    with pytest.raises(TypeError, match=r"missing \['conv2d_backward_input', 'set_num_threads'.*"
                                        r"unknown capabilities \['teleport'\]"):
        kernels.register_set("broken", mod)
    assert "broken" not in kernels.set_names()
    with pytest.raises(ValueError, match="not 'auto'"):
        kernels.register_set("auto", forwarding_set({}))


def test_capabilities_are_declared_and_asked_for_by_name():
    """Among them what the tools need of the cuda set."""
    assert kernels.has(numpy_set, "split_steps") and kernels.has(numpy_set, "threads")
    cuda_set = kernels.load_set("cuda")
    assert kernels.has(cuda_set, "launches") and not kernels.has(cuda_set, "split_steps")
    with pytest.raises(ValueError, match="unknown capability 'gpu'"):
        kernels.has(numpy_set, "gpu")
    for mod in (numpy_set, cuda_set):
        kernels.check_set(mod.__name__, mod)
    for cap in ("probe", "compile_cache", "scatter_add"):
        assert kernels.has(cuda_set, cap) and not kernels.has(numpy_set, cap)
    ok, why, info = cuda_set.probe()
    assert isinstance(ok, bool) and why and "simulator" in info
    assert str(cuda_set.cache_dir()) and "kernel source" in cuda_set.cache_note()
    a = np.zeros(3)
    cuda_set.scatter_add(a, np.array([0, 2, 0]), np.array([1.0, 2.0, 3.0]))
    assert a.tolist() == [4.0, 0.0, 2.0]      # repeated indices add up
