"""The sections of the real-GPU check (``python -m gpucnn.gpucheck``; see that module).

Each section runs in its own process (started by the driver in ``gpucnn.gpucheck``) with a
context (``check_context``: its tables, failures, device and timers) and calls the checks of
its job (``SECTIONS``): ``check_accuracy``, ``check_timing`` (ops, tile sweep),
``check_bandwidth``, ``check_e2e`` (launch overhead, ``fit``, AlexNet); the setup, examples
and tests sections are here, the last two running scripts and pytest in processes of their own.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

from gpucnn.bench import check_accuracy, check_bandwidth, check_e2e, check_timing
from gpucnn.bench.check_context import DeviceLost, setup, tiny_launches

EXAMPLES = ("perceptron", "basic_cnn", "lenet5", "alexnet", "autoencoder")
#: The tests section runs these files whole, then every test marked ``gpu_check``
#: (pyproject.toml's markers).
TEST_FILES = ("tests/test_ops.py", "tests/test_kernels_cuda.py", "tests/test_graphs.py",
              "tests/test_optim_kernels.py", "tests/test_fakes.py")
TEST_MARKER = "gpu_check"


def repo_root(ctx, what):
    """The source checkout gpucnn runs from (examples/ and tests/ beside gpucnn/), or None
    after a failure of ``what`` (the section that needs it)."""
    import gpucnn

    root = os.path.dirname(os.path.dirname(os.path.abspath(gpucnn.__file__)))
    if os.path.isdir(os.path.join(root, "examples")):
        return root
    ctx.fail(f"{what}: no {what}/ folder beside gpucnn (run from a source checkout)")


def section_setup(ctx):
    """The device and library versions, then every kernel compiled (or found) in the cache by
    several processes at once; its log goes to ``compile.log``."""
    rows = ctx.table("setup")
    for k in ("device", "compute_capability", "sms", "clock_mhz", "fp32_peak_gflops",
              "memory_gib", "cuda_driver", "cuda_runtime", "cupy", "numba", "numba_cuda", "nvvm",
              "kernel_cache", "launch_path", "torch"):
        if k in ctx.info:
            rows.append((k, ctx.info[k]))
    rows.append(("python", sys.version.split()[0]))
    rows.append(("numpy", np.__version__))
    cc = ctx.C.device_cc() if ctx.gpu else (9, 0)
    names = None
    if ctx.tiny:    # the PTX test compiles every kernel; the check's own test needs two
        names = [s.name for s in ctx.C.instruments().kernels()[:2]]
    log_path = os.path.join(ctx.out, "compile.log")
    with open(log_path, "w", encoding="utf-8") as log:
        res = ctx.C.fill_cache(cc, names=names, out=log)
    ok = [n for n, (_, _, err) in res.items() if not err]
    built = [res[n][1] for n in ok if res[n][0] == "built"]
    rows.append(("kernels ready", f"{len(ok)} of {len(res)} for sm_{cc[0]}{cc[1]} "
                 f"({len(built)} compiled, {len(ok) - len(built)} from the cache)"))
    if built:
        rows.append(("compile seconds", f"{sum(built):.1f} in all, slowest {max(built):.1f}"))
    for n, (_, _, err) in res.items():
        if err:
            ctx.fail(f"compile {n}: {err}")


#: Runs a script or pytest in a process of its own with the section's fault injected first.
_WRAP = ("import os, runpy, sys\n"
         "fault = os.environ.get('GPUCNN_SECTION_FAULT')\n"
         "if fault:\n"
         "    from gpucnn.bench import check_context; check_context.inject_fault(fault)\n"
         "target = sys.argv[1]; sys.argv = sys.argv[1:]\n"
         "if target == '-m':\n"
         "    sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__', "
         "alter_sys=True)\n"
         "else:\n"
         "    sys.path.insert(0, os.path.dirname(os.path.abspath(target)))\n"
         "    runpy.run_path(target, run_name='__main__')\n")


def _run_logged(cmd, log, env, timeout, cwd):
    """Run ``cmd``, its output appended to ``log``; ``(exit status, seconds, last lines)``."""
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
        rc, text = r.returncode, r.stdout
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
    log.write(text)
    log.flush()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return rc, time.perf_counter() - t, lines


def section_examples(ctx):
    """Every example script for one short epoch on the cuda backend (log: examples.log)."""
    rows = ctx.table("examples")
    root = repo_root(ctx, "examples")
    if root is None:
        return
    env = dict(os.environ, MPLBACKEND="Agg", GPUCNN_STRICT_LAUNCH="1",
               GPUCNN_SECTION_FAULT=ctx.fault)
    names = ("perceptron",) if ctx.tiny else EXAMPLES
    limit = "8" if ctx.tiny else "512"
    with open(os.path.join(ctx.out, "examples.log"), "a", encoding="utf-8") as log, \
            tempfile.TemporaryDirectory() as tmp:
        for name in names:
            cmd = [sys.executable, "-c", _WRAP, os.path.join(root, "examples", f"{name}.py"),
                   "--backend",
                   "cuda", "--epochs", "1", "--limit", limit, "--verbose", "2",
                   "--out", os.path.join(tmp, name)]
            rc, sec, lines = _run_logged(cmd, log, env, 120, root)
            pictures = len(os.listdir(os.path.join(tmp, name))) \
                if os.path.isdir(os.path.join(tmp, name)) else 0
            last = lines[-1] if lines else ""
            if rc == 0:   # the last line with a metric; on failure the last line is the error
                last = next((ln for ln in reversed(lines) if "loss" in ln or "accuracy" in ln),
                            last)
            rows.append((f"examples/{name}.py", rc, sec, pictures, last[:160]))
            print(f"  [ex] {name}: exit {rc} in {sec:.1f} s, {pictures} pictures", flush=True)
            if rc != 0:
                ctx.fail(f"examples/{name}.py exited with {rc}: {last[:200]}")


def section_tests(ctx):
    """The test suite's cuda tests on the device (``GPUCNN_TEST_REAL_GPU=1``; log: tests.log):
    ``TEST_FILES`` whole, then the tests marked ``TEST_MARKER``, in a pytest run each."""
    rows = ctx.table("tests")
    root = repo_root(ctx, "tests")
    if root is None:
        return
    env = dict(os.environ, GPUCNN_STRICT_LAUNCH="1", GPUCNN_SECTION_FAULT=ctx.fault)
    if ctx.gpu:
        env["GPUCNN_TEST_REAL_GPU"] = "1"
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    selections = [list(TEST_FILES), ["-m", TEST_MARKER]]
    if ctx.tiny:
        selections = [[TEST_FILES[0], "-k", "cuda and act_forward and relu"]]
    t0 = time.perf_counter()
    with open(os.path.join(ctx.out, "tests.log"), "a", encoding="utf-8") as log:
        for selection in selections:
            cmd = [sys.executable, "-c", _WRAP, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   *selection]
            left = 240 - (time.perf_counter() - t0)
            rc, sec, lines = _run_logged(cmd, log, env, max(left, 10), root)
            summary = next((ln for ln in reversed(lines) if " passed" in ln or " failed" in ln
                            or " error" in ln), lines[-1] if lines else "")
            rows.append((" ".join(selection), rc, sec, summary[:200]))
            print(f"  [tests] exit {rc} in {sec:.0f} s: {summary}", flush=True)
            if rc != 0:
                first = next((ln for ln in lines if ln.startswith("E ")), "")
                ctx.fail(f"tests: pytest exited with {rc}: {summary[:200]}; "
                         f"first error: {first[:300]}")


#: The checks each section runs, in order.
SECTIONS = {"setup": (section_setup,), "accuracy": (check_accuracy.check_accuracy,),
            "ops": (check_timing.time_ops, check_timing.tile_sweep),
            "bandwidth": (check_bandwidth.check_bandwidth,),
            "e2e": (check_e2e.launch_overhead, check_e2e.fit_steps),
            "alexnet": (check_e2e.alexnet,), "examples": (section_examples,),
            "tests": (section_tests,)}


def run_section(args) -> int:
    """The body of one section's process: 0 when it found nothing wrong, 1 otherwise, 3 when
    the device was lost."""
    ctx = setup(args)
    print(f"gpucheck [{args.section}]: {ctx.info.get('device', '?')}, launch path "
          f"{ctx.C.launch_path()}", flush=True)
    ctx.dump()
    try:
        with tiny_launches(args.tiny, not ctx.gpu):
            for check in SECTIONS[args.section]:
                check(ctx)
    except DeviceLost as e:
        ctx.fail(f"section {args.section} ended early: {e}")
        return 3
    except Exception as e:  # noqa: BLE001 - the section's own code failed: say where
        traceback.print_exc()
        ctx.fail(f"section {args.section} stopped: {type(e).__name__}: {e}")
        return 1
    return 1 if ctx.failures else 0
