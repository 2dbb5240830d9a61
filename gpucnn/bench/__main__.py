"""``python -m gpucnn.bench``: gpucnn beside PyTorch, per op and end to end (see the package
docstring; ``--help`` for the options)."""
import os
import sys

# Some machines set these for old OpenBLAS builds; they slow a current NumPy's OpenBLAS (a wrong
# core type, a wrong cache size). OpenBLAS reads them when it loads, and ``python -m`` has loaded
# NumPy (through gpucnn) before this line runs, so the benchmark re-executes itself without them.
# Only the benchmark process (and the processes it starts) lose them: never tests, never CI.
UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
MARK = "GPUCNN_BENCH_UNSET"


def _reexec_without_openblas_overrides():
    present = [k for k in UNSET if k in os.environ]
    if not present:
        return
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env[MARK] = ", ".join(f"{k}={os.environ[k]}" for k in present)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "gpucnn.bench", *sys.argv[1:]], env)


def env_note() -> str:
    removed = os.environ.get(MARK)
    if removed:
        return (f"unset {removed} for this benchmark process only (it re-executed itself "
                "before NumPy loaded OpenBLAS)")
    return "OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE were not set"


if __name__ == "__main__":
    _reexec_without_openblas_overrides()

import argparse  # noqa: E402


MODEL_NAMES = ("lenet5", "alexnet_small", "autoencoder")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m gpucnn.bench",
        description="gpucnn beside PyTorch: per-op and end-to-end times, GFLOP/s, peak memory "
                    "and the speed ratio gpucnn / PyTorch (above 1: gpucnn is faster).")
    p.add_argument("--backend", default=os.environ.get("GPUCNN_BACKEND") or "auto",
                   choices=("auto", "numpy", "cuda"), help="gpucnn backend (default: auto)")
    p.add_argument("--only", choices=("ops", "e2e"), help="run only the per-op or end-to-end part")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both gpucnn's NumPy kernels and PyTorch (default: gpucnn's "
                        "default, the usable CPUs up to 8, or GPUCNN_NUM_THREADS)")
    p.add_argument("--quick", action="store_true",
                   help="tiny batches, two repeats: proves every path runs (numbers mean nothing)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")
    p.add_argument("--models", default=None, metavar="LIST",
                   help="comma-separated subset of lenet5, alexnet_small, autoencoder (default: "
                        "all three)")
    p.add_argument("--no-torch", action="store_true", help="gpucnn's numbers only")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--out", metavar="FILE", help="also write the markdown report to FILE "
                                                 "(atomically: a temporary file, then a rename)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be a positive integer, got {args.threads}")
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be a positive integer, got {args.repeats}")
    if args.models is not None:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        bad = [m for m in names if m not in MODEL_NAMES]
        if bad or not names:
            p.error(f"--models expected a comma-separated subset of {', '.join(MODEL_NAMES)}, "
                    f"got {args.models!r}")
        args.models = names
    return args


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    import gpucnn
    from gpucnn import backend
    from gpucnn.bench import e2e, ops, report, torch_ref

    try:
        name = gpucnn.set_backend(args.backend)
    except RuntimeError as e:
        print(f"gpucnn.bench: {e}", file=sys.stderr)
        return 2
    ks = backend.kernels()
    if args.threads is not None and backend.has("threads"):
        ks.set_num_threads(args.threads)
    threads = ks.get_num_threads() if backend.has("threads") else (args.threads or 1)
    device = "cuda" if name == "cuda" else "cpu"
    tr = None
    torch_info = "not installed: gpucnn's numbers only"
    if args.no_torch:
        torch_info = "left out (--no-torch)"
    elif torch_ref.available():
        tr = torch_ref.TorchSide(torch_ref.setup(device, threads), device)
        torch_info = torch_ref.info(tr.torch)
    xp = backend.xp()
    gsync = xp.cuda.Device().synchronize if xp.__name__ == "cupy" else (lambda: None)
    tsync = tr.sync if tr is not None else (lambda: None)

    out = ["# gpucnn benchmark" + (" (--quick: tiny sizes, the numbers mean nothing)"
                                   if args.quick else ""), ""]
    out += report.machine(backend.backend_info(), threads, torch_info, env_note())
    if backend.has("allocator"):
        out.append(f"- Memory allocator: {ks.allocator_note()}")
    if name == "numpy":
        from gpucnn.parallel import forked

        how = (f"fit splits each training step over {threads} processes (the caller and "
               f"{threads - 1} forked worker(s), BLAS single-threaded)"
               if threads > 1 and forked.available(ks) else "fit runs each step whole")
        out.append(f"- gpucnn parallelism: {how}; predict and the per-op kernels split large "
                   f"batches over {threads} thread(s); PyTorch: {threads} intra-op thread(s)")
    print("\n".join(out), flush=True)

    def emit(lines):
        print("\n".join(lines), flush=True)
        out.extend(lines)

    warm = 1 if args.quick else 2
    if args.only != "e2e":
        _log("per-op timings ...")
        cases = ops.cases([m for m in MODEL_NAMES if args.models is None or m in args.models], tr,
                          batch_scale=(4 / 128) if args.quick else 1.0)
        ops.run(cases, gsync, tsync, warm, args.repeats or (2 if args.quick else None),
                budget=0.25, lead=0.0 if args.quick else None)
        section = ["", "## Per op (median of interleaved repeats; ratio = PyTorch time / gpucnn "
                       "time, above 1: gpucnn faster)", ""] + report.ops_table(cases)
        section += ["", "GFLOP/s counts each op's nominal products, the same count for both "
                        "sides, including the products with zero padding that an algorithm may "
                        "skip (gpucnn's border classes do)."]
        emit(section)
    if args.only != "ops":
        _log("end-to-end timings ...")
        cases = e2e.default_cases(args.quick)
        if args.models is not None:
            cases = [c for c in cases if c.model in args.models]
        e2e.run(cases, tr, gsync, 1, args.repeats or (2 if args.quick else 7),
                gap=0.0 if args.quick else 0.05)
        section = ["", "## End to end (training through Model.fit, inference through "
                       "Model.predict; PyTorch eager, same threads; median of interleaved repeats)",
                   ""] + report.e2e_table(cases, with_targets=(name == "numpy" and tr is not None))
        section += ["", "GFLOP/s counts the convolutions and dense layers only (forward, input "
                        "gradient except the first layer's, kernel gradient)." + (
                            " The batch-1 row is the per-step overhead: the whole training step "
                            "of LeNet-5 on one image." if any(c.kind == "overhead" for c in cases)
                            else "")]
        if not args.no_memory:
            _log("peak memory ...")
            mem_cases = [c for c in cases if c.kind == "train"]
            if args.quick:
                mem_cases = mem_cases[:1]
            e2e.memory(mem_cases, tr, name, threads)
            section += ["", "## Peak memory of training (host: growth of the resident set over "
                            "3 steps in a fresh process; GPU: CuPy pool / PyTorch allocator)", ""]
            section += report.memory_table(mem_cases)
        emit(section)
    from gpucnn.bench import _timing

    out_note = (f"Samples measured again because other processes kept more than "
                f"{_timing.MAX_FOREIGN:.0%} of the CPUs busy: {_timing.discarded[0]}")
    emit(["", out_note])
    emit(["", "## Libraries loaded at the end of the run (threadpoolctl)", ""]
         + [f"- {line}" for line in report.blas_lines()])
    if args.out:
        report.write_atomic(args.out, "\n".join(out) + "\n")
        _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
