"""The backend switch. Each case runs in a fresh interpreter with Numba's simulator off, so that it
sees this machine as a user does (CI and developer machines have no GPU)."""
import json
import os
import subprocess
import sys

import pytest

import gpucnn


def _run(code, **env):
    e = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "GPUCNN_BACKEND")}
    e.update(env)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)
    return r


def _has_gpu():
    r = _run("import gpucnn.kernels.cuda_set._runtime as r; print(r.probe()[0])")
    return r.stdout.strip() == "True"


GPU = _has_gpu()


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
