"""The benchmark (``python -m gpucnn.bench``) runs end to end at tiny sizes (--quick; nothing is
timed here), re-executes itself without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE and says so, writes
its markdown atomically; its FLOP counts, ratio and target columns, and interleaving are right."""
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from gpucnn import zoo
from gpucnn.bench import _timing, e2e, launch_cost, report, shapes
from gpucnn.bench.__main__ import MODEL_NAMES, parse_args


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.md"
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell", OPENBLAS_L2_SIZE="262144")
    env.pop("GPUCNN_BACKEND", None)
    res = subprocess.run([sys.executable, "-m", "gpucnn.bench", "--quick", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    return res, out


def test_quick_run_succeeds_and_unsets_the_openblas_overrides(quick_run):
    res, out = quick_run
    assert res.returncode == 0, res.stderr
    assert ("unset OPENBLAS_CORETYPE=Haswell, OPENBLAS_L2_SIZE=262144 for this benchmark "
            "process only") in res.stdout
    text = out.read_text()
    assert "## Per op" in res.stdout and "## End to end" in res.stdout
    assert text.startswith("# gpucnn benchmark (--quick")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".bench-")]   # no temp left


def _rows(text, header_start):
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_quick_report_has_every_case(quick_run):
    text = quick_run[1].read_text()
    for line in ("- CPU: ", "- gpucnn backend: numpy", "- Memory allocator: ", "- blas: ",
                 "## Per op", "## End to end", "## Peak memory"):
        assert line in text
    ops = _rows(text, "| Net | Op |")
    names = {r[1] for r in ops}
    for want in ("C1 forward (+bias, tanh)", "C3 input gradient", "C3 kernel gradient",
                 "S2 avg pool forward", "S4 avg pool backward", "pool1 max pool backward",
                 "conv2 input gradient", "dec1 transposed conv forward",
                 "Output sparse CE from logits backward", "output forward (+bias, sigmoid)"):
        assert want in names
    kernels = {r[3] for r in ops}
    assert {"toeplitz", "im2col", "dense GEMM", "scatter"} <= kernels
    torch = any(r[6] != "-" for r in ops)
    for r in ops:
        float(r[4])                                        # gpucnn ms
        assert re.fullmatch(r"\d+\.\d+x", r[8]) if torch else r[8] == "-"
    e2e_rows = _rows(text, "| Case | Batch | gpucnn img/s")
    assert [r[0] for r in e2e_rows] == [
        "LeNet-5 training", "AlexNet-small training", "Autoencoder training",
        "LeNet-5 inference", "LeNet-5 per-step overhead (training)"]
    for r in e2e_rows:
        assert float(r[2].replace(",", "")) > 0 and float(r[4]) > 0      # img/s, GFLOP/s
        if torch:
            assert re.fullmatch(r"\d+\.\d+x", r[8])
            assert r[9] == "-" or re.fullmatch(r">= \d\.\dx: (met|NOT met)", r[9])
    mem = _rows(text, "| Case | Batch | gpucnn peak MB (all processes)")
    assert mem and mem[0][0] == "LeNet-5 training" and float(mem[0][3]) > 0


def test_bad_options_are_refused():
    for argv in (["--threads", "0"], ["--repeats", "-1"], ["--only", "everything"],
                 ["--models", "lenet"], ["--models", ","]):
        with pytest.raises(SystemExit):
            parse_args(argv)
    args = parse_args(["--only", "ops", "--threads", "2", "--quick"])
    assert (args.only, args.threads, args.quick) == ("ops", 2, True)
    assert parse_args(["--models", "lenet5, autoencoder"]).models == ["lenet5", "autoencoder"]


def test_model_names_match_the_cases():
    assert MODEL_NAMES == tuple(e2e.MODELS)
    assert [e2e.LABELS[m] for m in MODEL_NAMES] == [shapes.net_table(m)[0] for m in MODEL_NAMES]


def test_benchmark_shapes_are_the_guides_networks():
    """The shapes come from the zoo's models; here against the sizes the guide gives for LeNet-5
    and AlexNet (section 5 and 7), and a stride-2 transposed conv doubling the autoencoder's maps.
    The GPU check's layers (``gpu_layers``) are the conv and pool rows of both networks."""
    label, batch, rows = shapes.net_table("lenet5")
    assert (label, batch) == ("LeNet-5", 128)
    assert [(r.name, r.hwc, r.k, r.filters, r.stride, r.kind) for r in rows] == [
        ("C1", (32, 32, 1), 5, 6, 1, "first"), ("S2", (28, 28, 6), 2, None, 2, "avg"),
        ("C3", (14, 14, 6), 5, 16, 1, "conv"), ("S4", (10, 10, 16), 2, None, 2, "avg"),
        ("C5", (5, 5, 16), 5, 120, 1, "conv"), ("Output", (10,), None, None, None, "xent")]
    _, batch, rows = shapes.net_table("alexnet")
    assert batch == 32
    assert [(r.name, r.hwc, r.k, r.filters, r.stride, r.kind) for r in rows][:-1] == [
        ("conv1", (227, 227, 3), 11, 96, 4, "first"), ("pool1", (55, 55, 96), 3, None, 2, "max"),
        ("conv2", (27, 27, 96), 5, 256, 1, "conv"), ("pool2", (27, 27, 256), 3, None, 2, "max"),
        ("conv3", (13, 13, 256), 3, 384, 1, "conv"), ("conv4", (13, 13, 384), 3, 384, 1, "conv"),
        ("conv5", (13, 13, 384), 3, 256, 1, "conv"), ("pool5", (13, 13, 256), 3, None, 2, "max")]
    # the GPU check's layers: the conv and pool rows above, with their network and batch
    convs, pools = shapes.gpu_layers(tiny=False)
    found = {"lenet": shapes.net_table("lenet5")[2], "alexnet": rows}
    assert [(r.net, r.n, r[:6], r.kind) for r in convs + pools] == [
        (net, n, r[:6], r.kind) for kinds in (("first", "conv"), ("avg", "max"))
        for net, n in (("lenet", 128), ("alexnet", 32)) for r in found[net] if r.kind in kinds]
    assert [c.act for c in convs] == ["tanh"] * 3 + ["relu"] * 5
    _, _, rows = shapes.net_table("autoencoder")
    dec = [r for r in rows if r.kind == "transpose"]
    assert [(r.hwc, r.stride) for r in dec] == [((7, 7, 8), 2), ((14, 14, 32), 2)]
    with pytest.raises(ValueError, match="unknown network 'vgg'"):
        shapes.net_table("vgg")


def test_models_option_runs_only_those(tmp_path):
    out = tmp_path / "r.md"
    res = subprocess.run([sys.executable, "-m", "gpucnn.bench", "--quick", "--no-torch",
                          "--no-memory", "--models", "autoencoder", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = [line for line in out.read_text().splitlines()
            if line.startswith("| ") and "---" not in line]
    assert any(r.startswith("| Autoencoder") for r in rows)
    assert not any(r.startswith(("| LeNet-5", "| AlexNet")) for r in rows)


def test_lenet5_flops_per_step():
    """Counted by hand from the guide's table: multiply-adds of each layer, times 2."""
    model = zoo.lenet5()
    fwd = {"C1": 28 * 28 * 5 * 5 * 1 * 6, "C3": 10 * 10 * 5 * 5 * 6 * 16,
           "C5": 1 * 1 * 5 * 5 * 16 * 120, "F6": 120 * 84, "Output": 84 * 10}
    per_sample = 2 * sum(fwd.values())
    assert e2e.model_flops(model, 3, train=False) == 3 * per_sample
    # training: forward + kernel gradient everywhere, input gradient for all but C1
    assert e2e.model_flops(model, 3, train=True) == 3 * (3 * per_sample - 2 * fwd["C1"])


def test_e2e_table_ratio_and_targets():
    fast = e2e.E2ECase("lenet5", "train", 32, 4, 1.5, 1e9, {"gpucnn": 0.001, "torch": 0.002})
    slow = e2e.E2ECase("lenet5", "train", 128, 4, 1.5, 1e9, {"gpucnn": 0.004, "torch": 0.005})
    alone = e2e.E2ECase("lenet5", "predict", 512, 4, results={"gpucnn": 0.01})
    rows = report.e2e_table([fast, slow, alone], with_targets=True)[2:]
    assert rows[0].split("|")[2:5] == [" 32 ", " 32,000 ", " 1.000 "]
    assert "| 1000.0 |" in rows[0] and "| 2.00x | >= 1.5x: met |" in rows[0]
    assert "| 1.25x | >= 1.5x: NOT met |" in rows[1]
    assert rows[2].endswith("| - | - | - | - | - |")


def test_write_atomic(tmp_path):
    path = tmp_path / "r.md"
    report.write_atomic(str(path), "one\n")
    report.write_atomic(str(path), "two\n")
    assert path.read_text() == "two\n"

    with pytest.raises(TypeError):
        report.write_atomic(str(path), 3)              # not text: fails mid-write
    assert path.read_text() == "two\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]


def test_interleaved_runs_sides_in_rounds():
    calls = []
    sides = [_timing.Side("a", lambda: calls.append("a")), _timing.Side("b", lambda: calls.append("b"))]
    _timing.interleaved(sides, warmup=1, repeats=3, per_call=2)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert all(len(s.samples) == 3 and s.median >= 0 for s in sides)
    assert _timing.repeat_count(0.01, 1.0, 5, 50) == 50
    assert _timing.repeat_count(1.0, 1.0, 5, 50) == 5
    assert np.isclose(_timing.repeat_count(0.05, 1.0, 5, 50), 20)


def test_cuda_backend_without_a_gpu_exits_2_with_the_reason():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    res = subprocess.run([sys.executable, "-m", "gpucnn.bench", "--backend", "cuda", "--quick"],
                         capture_output=True, text=True, env=env, timeout=120)
    try:
        import cupy  # noqa: F401
        has_gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any failure means no usable GPU
        has_gpu = False
    if has_gpu:
        pytest.skip("a GPU is present: the cuda backend runs")
    assert res.returncode == 2
    assert "gpucnn.bench: set_backend('cuda'): the CUDA backend cannot run here" in res.stderr


def test_samples_of_a_loaded_machine_are_measured_again(monkeypatch):
    ncpu = os.cpu_count() or 1
    assert _timing.foreign_load((10.0, 1.0), (10.0 + 2 * ncpu, 1.0), 4.0) == pytest.approx(0.5)
    assert _timing.foreign_load((10.0, 1.0), (12.0, 3.0), 1.0) == 0.0       # all of it was ours
    assert _timing.foreign_load(None, (1.0, 1.0), 1.0) == 0.0
    # the first attempt sees another process keep every CPU busy, the second sees none
    readings = iter([(0.0, 0.0), (1.0 * ncpu, 0.0), (5.0, 0.0), (5.0, 0.0)])
    monkeypatch.setattr(_timing, "_busy", lambda: next(readings))
    monkeypatch.setattr(_timing, "MIN_CHECKED", 0.0)
    monkeypatch.setattr(_timing.time, "sleep", lambda s: None)
    before = _timing.discarded[0]
    calls = []
    side = _timing.Side("a", lambda: calls.append(1))
    _timing.interleaved([side], warmup=0, repeats=1)
    assert len(calls) == 2 and len(side.samples) == 1
    assert _timing.discarded[0] == before + 1


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_running_childs_cpu_time_is_ours_not_foreign():
    # fit's worker processes outlive the timed call: their CPU time must not read as another
    # tenant's load (os.times counts a child only once it has been reaped)
    before = _timing._busy()
    pid = os.fork()
    if pid == 0:                                   # the child: burn 0.3 s of CPU, then wait
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        time.sleep(2.0)
        os._exit(0)
    try:
        # other children of this process (fit's kept workers) may be alive too: look at the
        # change, which only this child makes; it is never reaped before the end, so without
        # the live count os.times would not see its CPU time at all
        deadline = time.monotonic() + 10.0
        while _timing._busy()[1] - before[1] < 0.25:
            assert time.monotonic() < deadline, "the running child's CPU time never showed"
            time.sleep(0.05)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_device_timing_runs_many_short_calls_between_one_event_pair():
    """The GPU check's timing, with events that read a fake clock advanced by the calls: a
    call of 0.05 ms is timed in rounds of 20 calls (a 1 ms round), and the result is per call."""
    clock = {"t": 0.0, "calls": 0}

    class Event:
        def record(self):
            self.t = clock["t"]

        def synchronize(self):
            pass

    def call():
        clock["t"] += 0.05
        clock["calls"] += 1

    ms = _timing.device_ms(call, Event, lambda a, b: b.t - a.t, warmup=2, repeats=5)
    assert ms == pytest.approx(0.05)
    assert clock["calls"] == 2 + 1 + 5 * 20


def test_launch_cost_rows_count_the_launches_of_each_call_and_of_a_step():
    """The host-time benchmark of the cuda set runs without a GPU (raw launch path, driver
    faked): each call launches what it should (one kernel; the kernel gradient with its bias
    sum two), and a LeNet-5 SGD step on that path makes the 23 launches the simulator counts.
    Times are reported, not judged here."""
    rows = launch_cost.measure()
    launches = {label.split(" (")[0]: n for label, _, n, _ in rows}
    assert launches.pop("LeNet-5 training step") == 23
    assert launches.pop("conv2d_backward_weight_bias") == 2
    assert set(launches.values()) == {1}
    assert all(us > 0 for *_, us in rows)
    lines = launch_cost.table(rows)
    assert len(lines) == 4 + len(rows) and lines[-1].endswith("| - |")
