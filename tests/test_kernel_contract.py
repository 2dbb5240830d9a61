"""The kernel contract, written once in ``gpucnn.kernels``: a third kernel set needs no change
above the kernels. A tiny set that forwards every contract function to the NumPy set (and
counts the calls), offering none of the optional capabilities, trains a model through the public
API to the same weights as the NumPy backend."""
import types

import numpy as np
import pytest

import gpucnn
from gpucnn import backend, kernels, layers, models, optimizers
from gpucnn.kernels import numpy_set


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
    assert kernels.has(numpy_set, "split_steps") and kernels.has(numpy_set, "threads")
    cuda_set = kernels.load_set("cuda")
    assert kernels.has(cuda_set, "launches") and not kernels.has(cuda_set, "split_steps")
    with pytest.raises(ValueError, match="unknown capability 'gpu'"):
        kernels.has(numpy_set, "gpu")
    for mod in (numpy_set, cuda_set):
        kernels.check_set(mod.__name__, mod)


def test_what_the_tools_need_of_the_cuda_set_are_capabilities():
    cuda_set = kernels.load_set("cuda")
    for cap in ("probe", "compile_cache", "scatter_add"):
        assert kernels.has(cuda_set, cap) and not kernels.has(numpy_set, cap)
    ok, why, info = cuda_set.probe()
    assert isinstance(ok, bool) and why and "simulator" in info
    assert str(cuda_set.cache_dir()) and "kernel source" in cuda_set.cache_note()
    a = np.zeros(3)
    cuda_set.scatter_add(a, np.array([0, 2, 0]), np.array([1.0, 2.0, 3.0]))
    assert a.tolist() == [4.0, 0.0, 2.0]      # repeated indices add up
