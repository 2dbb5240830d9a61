"""The real-GPU check of gpucnn: ``python -m gpucnn.gpucheck --out DIR``.

On a machine with an NVIDIA GPU it runs, each section in a fresh process of its own:

``setup``     the device and library versions; every kernel compiled into the kernel cache by
              several processes at once (``compile.log``);
``accuracy``  every contract function of the cuda set at the guide's layer sizes against the
              NumPy set, and the cheap CuPy launch path against Numba's own launcher (bitwise);
``ops``       every kernel timed with CUDA events beside PyTorch (cuDNN, fp32, TF32 off), the
              convolutions' GFLOP/s against the fp32 peak, and the conv tile sweep;
``bandwidth`` every memory-bound kernel's floor bytes per second against a device-to-device
              copy's, beside PyTorch's counterpart (``bench/check_bandwidth.py``);
``e2e``       host and device time per launch (raw path, Numba's path, CuPy, PyTorch) and
              LeNet-5 through ``fit`` (images/s, host time and launches per step) beside
              PyTorch eager and CUDA-graphed, with the targets;
``alexnet``   the guide's AlexNet (227 x 227 x 3) through ``fit`` at batch 128 beside PyTorch,
              fp32 then TF32: images/s, peak device memory, the targets; the time to the first
              step in a fresh process, kernel cache warm and cold;
``examples``  every example script for one short epoch on the GPU (``examples.log``);
``tests``     the test suite's cuda tests on the hardware, ``GPUCNN_TEST_REAL_GPU=1``
              (``tests.log``).

Nothing can lose what has been measured: a section writes each row as it is made, the driver
rewrites ``report.md`` and ``report.json`` as soon as a section ends (or is stopped at its time
limit, or dies), a sticky device error ends only its own section, and the next section starts in
a fresh process. At most six files land in ``--out``: ``report.md``, ``report.json``,
``compile.log``, ``examples.log``, ``tests.log``, ``sections.log`` (everything the sections
printed). The standard output carries a short summary only.

Exit status: 0 when every section ran and found nothing wrong; 1 when a section failed (the
summary and ``report.md`` name them); 2 when the cuda backend cannot run here. ``--tiny`` runs
every section on tiny shapes, in Numba's CUDA simulator when ``NUMBA_ENABLE_CUDASIM=1`` (that is
how the tests run it without a GPU). ``docs/gpu.md`` gives the command for a GPU machine.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time

ORDER = ("setup", "accuracy", "ops", "bandwidth", "e2e", "alexnet", "examples", "tests")

#: Seconds each section may take at most on a GPU (the whole run has ``--budget``).
LIMITS = {"setup": 150, "accuracy": 90, "ops": 150, "bandwidth": 90, "e2e": 90, "alexnet": 240,
          "examples": 200, "tests": 240}

FILES = ("report.md", "report.json", "compile.log", "examples.log", "tests.log", "sections.log")

#: (title, column headers, cell formats) of each table a section fills.
TABLES = {
    "setup": ("Setup", ("item", "value"), ("{}", "{}")),
    "accuracy": ("Accuracy against the NumPy set (largest relative error)",
                 ("op", "shape", "max rel err", "tolerance", "verdict"),
                 ("{}", "{}", "{:.2e}", "{:.0e}", "{}")),
    "ops": ("Kernel times (device time per call), GFLOP/s, PyTorch side by side",
            ("net", "layer", "op", "shape", "gpucnn ms", "GFLOP/s", "% fp32 peak", "PyTorch ms",
             "speed vs PyTorch (>1: gpucnn faster)"),
            ("{}", "{}", "{}", "{}", "{:.4f}", "{:.0f}", "{:.1f}", "{:.4f}", "{:.2f}")),
    "sweep": ("Conv tile sweep (candidates against the default tile)",
              ("layer", "GEMM", "tile bm/bn/bk tm x tn, blocks/SM", "ms", "GFLOP/s", "speed-up",
               "rel err vs default"),
              ("{}", "{}", "{}", "{:.4f}", "{:.0f}", "{:.2f}", "{:.1e}")),
    "bandwidth": ("Memory-bound kernels: floor bytes (inputs read once, outputs written once) "
                  "per second against a device-to-device copy's",
                  ("net", "layer", "op", "shape", "floor MB", "gpucnn ms", "GB/s", "% of copy",
                   "PyTorch ms", "PyTorch % of copy", "speed vs PyTorch (>1: gpucnn faster)",
                   "note"),
                  ("{}", "{}", "{}", "{}", "{:.2f}", "{:.4f}", "{:.0f}", "{:.0f}", "{:.4f}",
                   "{:.0f}", "{:.2f}", "{}")),
    "overhead": ("Launch overhead: host time per call (queued back to back) and device time per "
                 "call (many calls between one event pair)",
                 ("call", "host µs per call", "device µs per call"), ("{}", "{:.1f}", "{:.2f}")),
    "fit": ("LeNet-5 through `fit`, CUDA graphs against eager steps: a steady-state epoch (a "
            "second `fit`, after one of two steps that warmed up and captured; launches counted "
            "by gpucnn: a graph launch counts as none, the update and the input copies as "
            "theirs), and PyTorch training the same epoch from pinned host memory eagerly and "
            "as a CUDA graph captured before the timing; `graphs` counts what the runner really "
            "captured and replayed; the targets: `fit` (graphed) at least 2x PyTorch eager's "
            "images/s and at least PyTorch graphed's",
            ("run", "batch", "images/s", "host CPU ms per step", "gpucnn launches per step",
             "x PyTorch eager", "x PyTorch graphed", "targets", "graphs"),
            ("{}", "{}", "{:.0f}", "{:.3f}", "{:.1f}", "{:.2f}", "{:.2f}", "{}", "{}")),
    "alexnet": ("AlexNet at 227 x 227 x 3 (62,378,344 parameters) through `fit`, batch 128, SGD "
                "with momentum, beside the same network in PyTorch (eager: dropout keeps "
                "gpucnn's step out of CUDA graphs too); synthetic random images and labels, on "
                "the device for both; peak device memory: CuPy's pool (and any graph's) grown "
                "during the run against PyTorch's `max_memory_allocated`; targets: fp32 at "
                "least 0.6x and TF32 at least 1x PyTorch fp32's images/s, memory at most "
                "PyTorch's",
                ("run", "precision", "images/s", "ms per step", "peak device MiB",
                 "x PyTorch fp32 images/s", "x PyTorch memory", "targets", "note"),
                ("{}", "{}", "{:.1f}", "{:.1f}", "{:.0f}", "{:.2f}", "{:.2f}", "{}", "{}")),
    "first_step": ("AlexNet: seconds from starting a fresh process to the end of its first "
                   "training step (batch 128, fp32; imports, CUDA context, model, data, step)",
                   ("run", "kind", "seconds", "kernel cache"), ("{}", "{}", "{:.1f}", "{}")),
    "examples": ("Example scripts, one short epoch on the cuda backend",
                 ("script", "exit", "seconds", "pictures", "last line"),
                 ("`{}`", "{}", "{:.1f}", "{}", "{}")),
    "tests": ("Test suite on the device", ("selection", "exit", "seconds", "summary"),
              ("`{}`", "{}", "{:.0f}", "{}")),
}
SECTION_TABLES = {"setup": ("setup",), "accuracy": ("accuracy",), "ops": ("ops", "sweep"),
                  "bandwidth": ("bandwidth",), "e2e": ("overhead", "fit"),
                  "alexnet": ("alexnet", "first_step"),
                  "examples": ("examples",), "tests": ("tests",)}


# --------------------------------------------------------------------------- report

def _cell(fmt, v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    try:
        return fmt.format(v).replace("|", "/")
    except (ValueError, TypeError):
        return str(v).replace("|", "/")


def markdown(report: dict) -> str:
    info = report.get("info", {})
    out = [f"## gpucnn GPU check: {info.get('device', '?')}, {report['date']}", "",
           f"Command: `{report['command']}`; gpucnn at {report.get('commit') or 'an unknown commit'}"
           f"; total {report['elapsed']:.0f} s.", "",
           "| section | status | seconds | failures |", "|---|---|---|---|"]
    for name in report["order"]:
        s = report["sections"].get(name, {"status": "not run", "seconds": None, "failures": []})
        out.append(f"| {name} | {s['status']} | {_cell('{:.0f}', s['seconds'])} | "
                   f"{len(s['failures'])} |")
    notes = sorted({s.get("torch_note") for s in report["sections"].values() if s.get("torch_note")})
    if notes:
        out += [""] + [f"{n}." for n in notes]
    for name in report["order"]:
        s = report["sections"].get(name)
        if not s:
            continue
        for t in SECTION_TABLES[name]:
            rows = s["tables"].get(t)
            if not rows:
                continue
            title, header, fmts = TABLES[t]
            out += ["", f"### {title}", "", "| " + " | ".join(header) + " |",
                    "|" + "---|" * len(header)]
            for r in rows:
                out.append("| " + " | ".join(_cell(f, v) for f, v in zip(fmts, r)) + " |")
    failures = [(n, f) for n in report["order"]
                for f in report["sections"].get(n, {}).get("failures", [])]
    if failures:
        out += ["", "### Failures", ""] + [f"- [{n}] {f}" for n, f in failures]
    return "\n".join(out) + "\n"


def _save(out_dir, report):
    from gpucnn.io import write_atomic

    for name, text in (("report.json", json.dumps(report, indent=1)),
                       ("report.md", markdown(report))):
        write_atomic(os.path.join(out_dir, name), lambda f, t=text: f.write(t.encode()),
                     op="gpucheck")


def _commit():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        r = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------- driver

def _child_cmd(args, section, part):
    cmd = [sys.executable, "-m", "gpucnn.gpucheck", "--section", section, "--part", part,
           "--out", args.out, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--seed", str(args.seed)]
    return cmd + ["--tiny"] * args.tiny + ["--no-torch"] * args.no_torch


def _fault_for(section):
    """``GPUCNN_GPUCHECK_FAULT=section=kernel[,section=kernel]``: the fault of this section."""
    for item in os.environ.get("GPUCNN_GPUCHECK_FAULT", "").split(","):
        name, _, kernel = item.partition("=")
        if name.strip() == section and kernel.strip():
            return kernel.strip()
    return ""


def _run_child(args, section, part, log, limit):
    env = dict(os.environ, PYTHONUNBUFFERED="1", GPUCNN_STRICT_LAUNCH="1")
    fault = _fault_for(section)
    cmd = _child_cmd(args, section, part) + (["--fault", fault] if fault else [])
    log.write(f"\n===== section {section} (limit {limit:.0f} s) =====\n")
    log.flush()
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                         start_new_session=True)
    try:
        rc = p.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        p.wait()
        rc = "timeout"
    log.flush()
    return rc, time.perf_counter() - t


#: A section's status by the exit status of its process (``gpu.run_section``).
STATUS = {0: "ok", 2: "the cuda backend cannot run here",
          3: "ended by a sticky device error; rows so far kept"}


def drive(args) -> int:
    os.makedirs(args.out, exist_ok=True)
    for name in FILES[2:]:          # logs of an earlier run in this folder
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(args.out, name))
    sections = [s for s in ORDER if s in args.sections]
    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python -m gpucnn.gpucheck " + " ".join(args.argv),
              "commit": _commit(), "order": sections, "sections": {}, "info": {}, "elapsed": 0.0}
    t0 = time.perf_counter()
    failed = []
    unusable = False
    with tempfile.TemporaryDirectory(prefix="gpucheck-") as parts, \
            open(os.path.join(args.out, "sections.log"), "a", encoding="utf-8") as log:
        for name in sections:
            left = args.budget - (time.perf_counter() - t0)
            if unusable or left < 15:
                why = "not run: the cuda backend cannot run here" if unusable \
                    else "not run: out of time (--budget)"
                report["sections"][name] = {"status": why, "seconds": None, "failures": [why],
                                            "tables": {}}
                failed.append(name)
                continue
            limit = min(LIMITS[name] * (4 if args.tiny else 1), left)
            part = os.path.join(parts, f"{name}.json")
            rc, sec = _run_child(args, name, part, log, limit)
            try:
                with open(part, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError):
                data = {"tables": {}, "failures": [], "info": {}}
            fails = list(data.get("failures", []))
            status = STATUS.get(rc, f"failed (exit {rc})")
            unusable = unusable or rc == 2
            if rc == "timeout":
                status = f"stopped at its time limit ({limit:.0f} s); rows so far kept"
                fails.append(status)
            elif rc not in STATUS and not fails:
                fails.append(f"the section's process exited with {rc} (see sections.log)")
            if fails and status == "ok":
                status = "failed"
            report["sections"][name] = {"status": status, "seconds": sec, "failures": fails,
                                        "tables": data.get("tables", {}),
                                        "torch_note": data.get("torch_note", "")}
            if not report["info"] and data.get("info"):
                report["info"] = data["info"]
            if status != "ok":
                failed.append(name)
            report["elapsed"] = time.perf_counter() - t0
            _save(args.out, report)
            print(f"gpucheck: {name:9s} {status} in {sec:.0f} s"
                  + (f" ({len(fails)} failures)" if fails else ""), flush=True)
    report["elapsed"] = time.perf_counter() - t0
    _save(args.out, report)
    _summary(report, args.out)
    if unusable:
        return 2
    return 1 if failed else 0


def _summary(report, out_dir):
    print(f"\ngpucheck: {report['info'].get('device', '?')}, {report['elapsed']:.0f} s; files in "
          f"{out_dir}: " + ", ".join(f for f in FILES if os.path.exists(os.path.join(out_dir, f))))
    for name in report["order"]:
        s = report["sections"].get(name, {})
        for f in s.get("failures", [])[:8]:
            print(f"  [{name}] {f[:300]}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m gpucnn.gpucheck",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join("runs", "gpucheck"), metavar="DIR",
                    help="folder for the report and logs (default runs/gpucheck)")
    ap.add_argument("--sections", default=",".join(ORDER),
                    help=f"comma-separated subset of {','.join(ORDER)}")
    ap.add_argument("--budget", type=float, default=460.0,
                    help="seconds for the whole run; a section that would start later is skipped")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny shapes and small tiles (runs in the simulator; for tests)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per op (default 15)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls per op (default 3)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparisons")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--section", choices=ORDER, help=argparse.SUPPRESS)  # a section's process
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--fault", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in ORDER]
    if bad:
        ap.error(f"--sections: unknown {bad}; expected a subset of {list(ORDER)}")
    if args.repeats is None:
        args.repeats = 1 if args.tiny else 15
    if args.warmup is None:
        args.warmup = 0 if args.tiny else 3
    if not args.tiny and args.repeats < 5:
        ap.error("--repeats must be >= 5 (use --tiny for a quick run)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.section:
        from gpucnn.bench import gpu

        return gpu.run_section(args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
