"""kernels/ installs as gpucnn.kernels (never as a bare top-level `kernels`), in a wheel and in the
editable install the test suite runs from."""
import importlib.util
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _source_modules():
    return {f"{prefix}/{p.relative_to(ROOT / top).as_posix()}"
            for top, prefix in (("gpucnn", "gpucnn"), ("kernels", "gpucnn/kernels"))
            for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("gpucnn-*.whl")
    with zipfile.ZipFile(whl) as z:
        return set(z.namelist())


def test_wheel_maps_kernels_into_gpucnn(wheel):
    for package in ("", "numpy_set/", "cuda_set/"):
        assert f"gpucnn/kernels/{package}__init__.py" in wheel
    assert not [n for n in wheel if n.startswith("kernels/")], "a bare top-level kernels package"


def test_wheel_holds_every_source_module(wheel):
    missing = sorted(_source_modules() - wheel)
    assert not missing, f"modules left out of the wheel (add their package to pyproject.toml): {missing}"


def test_editable_install_resolves_gpucnn_kernels_outside_the_repository(tmp_path):
    code = ("import importlib.util, gpucnn.kernels as k; print(k.__file__); "
            "print(importlib.util.find_spec('kernels'))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    path, spec = r.stdout.splitlines()
    assert pathlib.Path(path).resolve() == ROOT / "kernels" / "__init__.py"
    assert spec == "None", "a bare `kernels` module is importable from site-packages"


def test_gpucnn_kernels_is_one_module_from_the_repository_root():
    import gpucnn.kernels

    assert importlib.util.find_spec("gpucnn.kernels").origin == gpucnn.kernels.__file__


def test_a_bare_source_checkout_imports_kernels_under_one_name():
    """Nothing installed, the repository root on sys.path (site-packages only for NumPy and
    Numba, without the editable install's finder): ``gpucnn.kernels`` is the top-level folder,
    loaded once under that name, never as a bare ``kernels``."""
    import numpy

    site = str(pathlib.Path(numpy.__file__).parents[1])
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import gpucnn; "
            "import gpucnn.kernels as k; from gpucnn.kernels import numpy_set; "
            "print(k.__file__); print('kernels' in sys.modules); "
            "print(gpucnn.set_backend('numpy'))")
    r = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT), site], capture_output=True,
                       text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == [str(ROOT / "kernels" / "__init__.py"), "False", "numpy"]


def test_an_offline_install_needs_no_index(tmp_path):
    """``pip install --no-deps --no-build-isolation -e .`` (docs/gpu.md) builds from what the
    environment has: pip is told to use no index at all, and still installs."""
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-build-isolation", "--target", str(target), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (target / "gpucnn" / "kernels" / "cuda_set" / "_cache.py").exists()
