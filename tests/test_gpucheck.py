"""The real-GPU check script (``python -m gpucnn.gpucheck``) run with ``--tiny`` in Numba's CUDA
simulator: every section's code path runs (accuracy against the NumPy set, timings, launch
overhead, end-to-end step) and the markdown report comes last. On a GPU the same script runs at
full size; here it must simply be complete and honest about what it found."""
import re

import numpy as np
import pytest

from gpucnn import gpucheck
from gpucnn.kernels import CONTRACT


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import io
    from contextlib import redirect_stdout

    path = tmp_path_factory.mktemp("gpucheck") / "report.md"
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = gpucheck.main(["--tiny", "--markdown", str(path)])
    return rc, buf.getvalue(), path.read_text()


def test_tiny_run_passes_and_prints_the_tables_last(tiny_run):
    rc, out, md = tiny_run
    assert rc == 0, out[-3000:]
    assert out.rstrip().endswith(md.rstrip())          # the markdown report is the last thing
    for title in ("### 1. Accuracy", "### 2-4. Kernel times", "### 4b. Conv tile sweep",
                  "### 5. Launch overhead",
                  "### 6. End-to-end training step"):
        assert title in md
    assert "### Failures" not in md


def test_accuracy_section_covers_every_contract_function(tiny_run):
    _, _, md = tiny_run
    section = md.split("### 1.")[1].split("### 2-4.")[0]
    for name in CONTRACT:
        if name not in ("xp", "asarray", "to_host"):
            assert name in section, f"{name} is not checked by gpucheck"
    rows = [r for r in section.splitlines() if r.startswith("| ") and "max rel err" not in r]
    errs = [float(r.split("|")[3]) for r in rows]
    assert len(rows) >= 30 and max(errs) < 1e-5


def test_timing_and_end_to_end_rows_have_numbers(tiny_run):
    _, _, md = tiny_run
    timings = md.split("### 2-4.")[1].split("### 4b.")[0]
    ms = [r.split("|")[5].strip() for r in timings.splitlines() if r.startswith("| lenet")
          or r.startswith("| alexnet")]
    assert len(ms) >= 20 and all(re.fullmatch(r"\d+\.\d{3}", v) for v in ms)
    sweep = md.split("### 4b.")[1].split("### 5.")[0]
    assert sweep.count("(default)") >= 6                  # every GEMM of the swept layers
    e2e = md.split("### 6.")[1]
    row = [r for r in e2e.splitlines() if r.startswith("| basic CNN")][0]
    assert float(row.split("|")[3]) > 0
    assert re.search(r"\d+ gpucnn kernel launches per step", row)


def test_a_wrong_kernel_is_reported(monkeypatch):
    """The accuracy section catches a kernel that returns wrong numbers."""
    args = gpucheck.argparse.Namespace(tiny=True, repeats=1, warmup=0, no_torch=True, seed=1)
    ctx = gpucheck._setup(args)
    real = ctx.C.softmax_forward
    monkeypatch.setattr(ctx.C, "softmax_forward", lambda x: real(x) * np.float32(1.01))
    monkeypatch.setattr(gpucheck, "accuracy_cases",
                        lambda c: [c_ for c_ in _cases(c) if "softmax" in c_[0]])
    rows = gpucheck.check_accuracy(ctx)
    verdicts = {r[0]: r[4] for r in rows}
    assert verdicts["softmax_forward"] == "WRONG"         # 1e-2 relative
    assert verdicts["log_softmax_forward"] == "ok"
    assert [f for f in ctx.failures if "softmax_forward" in f]


_cases = gpucheck.accuracy_cases


def test_refuses_to_run_without_a_usable_backend(monkeypatch, capsys):
    from gpucnn.kernels.cuda_set import _runtime

    monkeypatch.setattr(_runtime, "probe", lambda: (False, "no NVIDIA device (test)", {}))
    with pytest.raises(SystemExit) as e:
        gpucheck.main(["--tiny"])
    assert e.value.code == 2
    assert "no NVIDIA device (test)" in capsys.readouterr().err


def test_full_size_needs_twenty_repeats(monkeypatch, capsys):
    def never(args):
        raise AssertionError("gpucheck started a full-size run with too few repeats")

    monkeypatch.setattr(gpucheck, "_setup", never)
    with pytest.raises(SystemExit) as e:
        gpucheck.main(["--repeats", "5"])
    assert e.value.code == 2 and "--repeats must be >= 20" in capsys.readouterr().err


class _FakeEvent:
    """Stands for cupy.cuda.Event: records a host timestamp."""

    def record(self):
        import time

        self.t = time.perf_counter()

    def synchronize(self):
        pass


class _FakeCuPy:
    """Just the CuPy calls the GPU code paths of gpucheck make, answered on the host."""

    class cuda:
        Event = _FakeEvent

        @staticmethod
        def get_elapsed_time(a, b):
            return 1e3 * (b.t - a.t)

        class runtime:
            @staticmethod
            def getDeviceProperties(dev):
                return {"major": 9, "minor": 0, "multiProcessorCount": 132, "clockRate": 1980000,
                        "name": b"NVIDIA H200", "totalGlobalMem": 141 * 2**30}

        class Device:
            id = 0
            attributes = {}


def test_gpu_timer_takes_the_median_of_cuda_event_pairs():
    ctx = gpucheck.Ctx(tiny=True, repeats=21, warmup=2, use_torch=False)
    ctx.gpu, ctx.cp = True, _FakeCuPy
    calls = []
    ms = ctx.median_ms(lambda: calls.append(1))
    assert len(calls) == 23 and 0 <= ms < 5


def test_fp32_peak_from_the_device_properties():
    info = gpucheck._device_info(_FakeCuPy)
    assert info["device"] == "NVIDIA H200" and info["compute_capability"] == "9.0"
    # 132 SMs x 128 fp32 lanes x 2 flops x 1.98 GHz
    assert info["fp32_peak_gflops"] == pytest.approx(132 * 128 * 2 * 1.98, rel=1e-9)
