"""The real-GPU check (``python -m gpucnn.gpucheck``) run with ``--tiny`` in Numba's CUDA
simulator: every section runs in its own process and writes its tables as it goes; a kernel made
to raise in one section (``GPUCNN_GPUCHECK_FAULT``) fails that section only, and the next
section still runs and writes its files. On a GPU the same driver runs at full size
(docs/gpu.md)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import gpucnn
from gpucnn import gpucheck
from gpucnn.bench import check_e2e, torch_ref
from gpucnn.kernels import CONTRACT


def run_check(tmp_path, *args, fault=None):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", GPUCNN_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("GPUCNN_GPUCHECK_FAULT", None)
    if fault:
        env["GPUCNN_GPUCHECK_FAULT"] = fault
    out = tmp_path / "out"
    # the GPU's --budget is not the simulator's: a loaded CI machine must not skip sections
    r = subprocess.run([sys.executable, "-m", "gpucnn.gpucheck", "--tiny", "--out", str(out),
                        "--budget", "3600", *args], env=env, capture_output=True, text=True,
                       timeout=1800)
    report = json.loads((out / "report.json").read_text())
    return r, out, report, (out / "report.md").read_text()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return run_check(tmp_path_factory.mktemp("gpucheck"))


def test_every_section_runs_and_writes_its_files(tiny_run):
    r, out, report, md = tiny_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(os.listdir(out)) == sorted(gpucheck.FILES)
    assert [report["sections"][s]["status"] for s in gpucheck.ORDER] == ["ok"] * len(gpucheck.ORDER)
    for title, _, _ in gpucheck.TABLES.values():
        assert f"### {title}" in md, title
    assert "### Failures" not in md
    # the standard output is a short summary: one line per section, not the tables
    assert len(r.stdout.splitlines()) < 12 and "| " not in r.stdout


def test_accuracy_covers_every_contract_function(tiny_run):
    _, _, report, _ = tiny_run
    rows = report["sections"]["accuracy"]["tables"]["accuracy"]
    text = " ".join(row[0] for row in rows)
    for name in CONTRACT:
        if name not in ("xp", "asarray", "to_host"):
            assert name in text, f"{name} is not checked by gpucheck"
    assert len(rows) >= 30 and max(row[2] for row in rows) < 1e-5
    assert {row[4] for row in rows} == {"ok"}


def test_timing_rows_have_numbers(tiny_run):
    _, _, report, md = tiny_run
    ops = report["sections"]["ops"]["tables"]["ops"]
    assert len(ops) >= 20 and all(row[4] > 0 for row in ops)
    sweep = report["sections"]["ops"]["tables"]["sweep"]
    assert sum("(default)" in row[2] for row in sweep) >= 6     # every GEMM of the swept layers
    over = report["sections"]["e2e"]["tables"]["overhead"]
    assert over and all(row[1] > 0 and row[2] > 0 for row in over)


def test_fit_rows_count_real_captures_and_replays_of_a_steady_state_epoch(tiny_run):
    """The timed epoch is a second ``fit``: the runner the first one captured with is kept, so
    the timed epoch captures nothing and replays every step; eager rows replay none. The column
    counts the runner's captures and replays, not the setting."""
    _, _, report, _ = tiny_run
    fit = {(row[0], row[1]): row for row in report["sections"]["e2e"]["tables"]["fit"]}
    assert fit[("LeNet-5 fit, graphs", 2)][8] == "0 captures, 3 of 3 steps replayed"
    assert fit[("LeNet-5 fit, eager", 2)][8] == "0 captures, 0 of 3 steps replayed"
    # no PyTorch in the simulator: no ratios, and the targets say so instead of a verdict
    for row in fit.values():
        assert row[2] > 0 and row[3] > 0 and row[4] > 0 and row[5] is None and row[6] is None
    assert fit[("LeNet-5 fit, graphs", 2)][7] == ("PyTorch eager: no PyTorch figure; "
                                                  "PyTorch graphed: no PyTorch figure")


def test_alexnet_rows_train_in_both_precisions_and_time_the_first_step(tiny_run):
    """The AlexNet section's stand-in (the same code as at 227 x 227) trains through fit in fp32
    and TF32; dropout keeps its steps eager and the row says so; the first step is timed in
    fresh processes with the kernel cache warm and cold."""
    _, _, report, md = tiny_run
    tables = report["sections"]["alexnet"]["tables"]
    rows = {row[1]: row for row in tables["alexnet"]}
    assert sorted(rows) == ["TF32", "fp32"] and {r[0] for r in rows.values()} == {"gpucnn fit"}
    for r in rows.values():
        assert r[2] > 0 and abs(r[3] - 1e3 * 2 / r[2]) < 1e-6 * r[3]     # ms per step, batch 2
        assert r[4] is None and r[5] is None and r[6] is None          # no device, no PyTorch
        assert "graphs off: the step draws random keys (dropout)" in r[8]
        assert "0 of 1 steps replayed" in r[8]
    # TF32 runs other kernels (the mma.sync family and a separate bias sum): more launches
    launches = {p: int(r[8].split()[0]) for p, r in rows.items()}
    assert launches["TF32"] > launches["fp32"] > 10, launches
    first = {row[1]: row for row in tables["first_step"]}
    assert sorted(first) == ["cold", "warm"] and all(r[2] > 0 for r in first.values())


def test_verdicts_and_ratios():
    nan = float("nan")
    assert check_e2e.ratio(3.0, 1.5) == 2.0
    assert check_e2e.ratio(3.0, nan) != check_e2e.ratio(3.0, nan)
    assert check_e2e._verdict(2.0, 2.0, "PyTorch eager") == "PyTorch eager >= 2x: met"
    assert check_e2e._verdict(0.59, 0.6, "x") == "x >= 0.6x: NOT met"
    assert check_e2e._verdict(nan, 1.0, "x") == "x: no PyTorch figure"


def test_the_checked_alexnet_is_the_guides_on_both_sides():
    """What the AlexNet rows train at full size: the guide's 62,378,344 parameters (test_zoo
    derives the count layer by layer) in gpucnn, built on the NumPy backend and not trained, and
    in its PyTorch twin."""
    before = gpucnn.get_backend()
    gpucnn.set_backend("numpy")
    try:
        model, shape, classes = check_e2e.alexnet_model(tiny=False)
    finally:
        gpucnn.set_backend(before)
    assert (model.count_params(), shape, classes) == (62_378_344, (227, 227, 3), 1000)
    torch = pytest.importorskip("torch")
    assert sum(p.numel() for p in torch_ref.alexnet(torch).parameters()) == 62_378_344


def test_pytorch_fit_twin_trains_on_nhwc_arrays_read_in_place(monkeypatch):
    """The PyTorch side of the AlexNet rows, on the CPU: the NHWC arrays are read through DLPack
    as channels-last NCHW (no copy), sliced per batch, and the net trains (its weights move)."""
    torch = pytest.importorskip("torch")
    real, built = torch_ref.alexnet, []

    def small(t):          # the guide's network at 15 x 15, 3 classes
        net = real(t, 15, 3, width=0.05, dense_units=8, stem="small")
        built.append((net, [p.detach().clone() for p in net.parameters()]))
        return net

    monkeypatch.setattr(torch_ref, "alexnet", small)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((6, 15, 15, 3), dtype=np.float32)
    y = rng.integers(0, 3, 6)
    view = torch_ref._nchw(torch, x)
    assert view.shape == (6, 3, 15, 15) and view.data_ptr() == x.ctypes.data
    got = torch_ref.gpu_alexnet_fit(torch, x, y, 2, device="cpu")
    assert got["images/s"] > 0 and got["host ms/step"] > 0 and got["peak MiB"] != got["peak MiB"]
    (net, w0), = built
    assert all(not torch.equal(a, p.detach()) for a, p in zip(w0, net.parameters()))


def test_setup_examples_and_tests_sections_report_what_ran(tiny_run):
    _, out, report, _ = tiny_run
    setup = dict(report["sections"]["setup"]["tables"]["setup"])
    assert setup["kernels ready"].startswith("2 of 2 for sm_90")
    assert "compiled" in (out / "compile.log").read_text()
    (ex,) = report["sections"]["examples"]["tables"]["examples"]
    assert ex[0] == "examples/perceptron.py" and ex[1] == 0 and ex[3] >= 1
    assert "test accuracy" in (out / "examples.log").read_text()
    (tests,) = report["sections"]["tests"]["tables"]["tests"]
    assert tests[1] == 0 and re.search(r"\d+ passed", tests[3])


# A fault in each section in turn: that section fails (its rows so far kept), the section after
# it runs in a fresh process and writes its files. (setup: a kernel fails to compile.)
FAULTS = {"setup": ("setup=act_fwd[float64]", "e2e"),
          "accuracy": ("accuracy=sticky:gemm_fwd", "e2e"),
          "ops": ("ops=act_fwd", "e2e"),
          "e2e": ("e2e=sticky:act_fwd", "setup"),
          "examples": ("examples=gemm_fwd", "e2e"),
          "tests": ("tests=act_fwd", "e2e")}


@pytest.mark.parametrize("section", list(FAULTS))
def test_a_failing_section_does_not_stop_the_others(tmp_path, section):
    fault, other = FAULTS[section]
    r, out, report, md = run_check(tmp_path, "--sections", f"{section},{other}", fault=fault)
    assert r.returncode == 1, r.stdout[-2000:]
    bad, good = report["sections"][section], report["sections"][other]
    assert bad["status"] != "ok" and any("injected" in f for f in bad["failures"]), bad
    assert good["status"] == "ok", good
    assert good["tables"] and all(good["tables"].values())
    assert f"[{section}]" in r.stdout and "### Failures" in md
    if fault.startswith(f"{section}=sticky:"):
        assert "sticky device error" in bad["status"]
        assert any(bad["tables"].values()) or section == "e2e"      # rows before it are kept
    for name in ("report.md", "report.json", "sections.log"):
        assert (out / name).exists()

