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

import pytest

from gpucnn import gpucheck
from gpucnn.kernels import CONTRACT


def run_check(tmp_path, *args, fault=None):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", GPUCNN_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("GPUCNN_GPUCHECK_FAULT", None)
    if fault:
        env["GPUCNN_GPUCHECK_FAULT"] = fault
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "gpucnn.gpucheck", "--tiny", "--out", str(out),
                        *args], env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((out / "report.json").read_text())
    return r, out, report, (out / "report.md").read_text()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return run_check(tmp_path_factory.mktemp("gpucheck"))


def test_every_section_runs_and_writes_its_files(tiny_run):
    r, out, report, md = tiny_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(os.listdir(out)) == sorted(gpucheck.FILES)
    assert [report["sections"][s]["status"] for s in gpucheck.ORDER] == ["ok"] * 6
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
    (e2e,) = report["sections"]["e2e"]["tables"]["e2e"]
    assert e2e[2] > 0 and re.fullmatch(r"(one CUDA graph and )?\d+ (gpucnn )?kernel launches per step.*", e2e[5])


def test_fit_rows_count_real_captures_and_replays_of_a_steady_state_epoch(tiny_run):
    """The timed epoch is a second ``fit``: the runner the first one captured with is kept, so
    the timed epoch captures nothing and replays every step; eager rows replay none. The column
    counts the runner's captures and replays, not the setting."""
    _, _, report, _ = tiny_run
    fit = {(row[0], row[1]): row for row in report["sections"]["e2e"]["tables"]["fit"]}
    assert fit[("LeNet-5 fit, graphs", 2)][5] == "0 captures, 3 of 3 steps replayed"
    assert fit[("LeNet-5 fit, eager", 2)][5] == "0 captures, 0 of 3 steps replayed"


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
          "examples": ("examples=act_fwd", "e2e"),
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


def test_full_size_layers_are_the_zoo_networks():
    from gpucnn.bench import shapes

    convs, pools = shapes.gpu_layers(tiny=False)
    assert [(c.net, c.name, c.x, c.k, c.filters, c.stride) for c in convs] == [
        ("lenet", "C1", (128, 32, 32, 1), 5, 6, 1), ("lenet", "C3", (128, 14, 14, 6), 5, 16, 1),
        ("lenet", "C5", (128, 5, 5, 16), 5, 120, 1),
        ("alexnet", "conv1", (32, 227, 227, 3), 11, 96, 4),
        ("alexnet", "conv2", (32, 27, 27, 96), 5, 256, 1),
        ("alexnet", "conv3", (32, 13, 13, 256), 3, 384, 1),
        ("alexnet", "conv4", (32, 13, 13, 384), 3, 384, 1),
        ("alexnet", "conv5", (32, 13, 13, 384), 3, 256, 1)]
    assert [c.act for c in convs] == ["tanh"] * 3 + ["relu"] * 5
    assert [(p.name, p.kind, p.x[1:], p.k, p.stride) for p in pools] == [
        ("S2", "avg", (28, 28, 6), 2, 2), ("S4", "avg", (10, 10, 16), 2, 2),
        ("pool1", "max", (55, 55, 96), 3, 2), ("pool2", "max", (27, 27, 256), 3, 2),
        ("pool5", "max", (13, 13, 256), 3, 2)]
