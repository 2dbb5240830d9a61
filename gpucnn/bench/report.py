"""The benchmark's report: the machine it ran on and markdown tables of the measurements."""
from __future__ import annotations

import datetime
import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> str:
    total = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        usable = total
    return f"{usable} usable of {total}" if usable != total else str(total)


def blas_lines() -> list:
    """One line per BLAS (and OpenMP) library loaded in this process, from threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["threadpoolctl is not installed: the BLAS is unknown"]
    out = []
    for lib in threadpool_info():
        name = " ".join(str(v) for v in (lib.get("internal_api", "?"), lib.get("version")) if v)
        extra = [f"{k} {lib[k]}" for k in ("architecture", "threading_layer") if lib.get(k)]
        out.append(f"{lib.get('user_api', '?')}: {name} "
                   f"({', '.join(extra + [os.path.basename(lib.get('filepath', ''))])}), "
                   f"{lib.get('num_threads')} threads by default")
    return out


def machine(backend_info: dict, threads: int, torch_info: str, env_note: str) -> list:
    import numpy

    lines = [
        f"- Date: {datetime.date.today().isoformat()}",
        f"- CPU: {cpu_model()}, {cpu_count()} cores",
        f"- gpucnn backend: {backend_info['backend']} ({backend_info['reason']}), "
        f"{threads} kernel thread{'s' if threads != 1 else ''}",
    ]
    if backend_info["backend"] == "cuda":
        lines.append(f"- GPU: {backend_info.get('device', '?')}")
    lines += [f"- Python {platform.python_version()}, NumPy {numpy.__version__}",
              f"- PyTorch: {torch_info}"]
    lines += [f"- {line}" for line in blas_lines()]
    lines.append(f"- Environment: {env_note}")
    return lines


def _ms(s):
    return "-" if s is None else f"{s * 1e3:.3f}" if s < 0.01 else f"{s * 1e3:.2f}"


def _gflops(flops, s):
    return "-" if s is None or not flops else f"{flops / s / 1e9:.1f}"


def _ratio(g, t):
    return "-" if g is None or t is None else f"{t / g:.2f}x"


def _mb(b):
    return "-" if b is None else f"{b / 2**20:.1f}"


def table(header, rows) -> list:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def e2e_table(cases, with_targets: bool) -> list:
    header = ["Case", "Batch", "gpucnn img/s", "ms/step", "GFLOP/s", "PyTorch img/s", "ms/step",
              "GFLOP/s", "gpucnn / PyTorch"]
    if with_targets:
        header.append("Target")
    rows = []
    for c in cases:
        g, t = c.results.get("gpucnn"), c.results.get("torch")
        row = [c.label, c.batch, f"{c.batch / g:,.0f}", _ms(g), _gflops(c.flops, g),
               "-" if t is None else f"{c.batch / t:,.0f}", _ms(t), _gflops(c.flops, t),
               _ratio(g, t)]
        if with_targets:
            if c.target is None or t is None:
                row.append("-")
            else:
                row.append(f">= {c.target:.1f}x: {'met' if t / g >= c.target else 'NOT met'}")
        rows.append(row)
    return table(header, rows)


def memory_table(cases) -> list:
    rows = []
    for c in cases:
        if not c.memory:
            continue
        g, t = c.memory.get("gpucnn", {}), c.memory.get("torch", {})
        ratio = "-"
        if g.get("rss") and t.get("rss"):
            ratio = f"{g['rss'] / t['rss']:.2f}"
        rows.append([c.label, c.batch, _mb(g.get("rss")), _mb(g.get("traced")), _mb(t.get("rss")),
                     ratio])
    if not rows:
        return []
    return table(["Case", "Batch", "gpucnn peak MB (all processes)",
                  "gpucnn NumPy arrays MB (calling process, tracemalloc)", "PyTorch peak MB",
                  "gpucnn / PyTorch"], rows)


def ops_table(cases) -> list:
    rows = []
    for c in cases:
        g, t = c.results.get("gpucnn"), c.results.get("torch")
        rows.append([c.net, c.op, c.shape, c.kernel or "-", _ms(g), _gflops(c.flops, g), _ms(t),
                     _gflops(c.flops, t), _ratio(g, t)])
    return table(["Net", "Op", "Shape (NHWC, HWIO)", "Kernel", "gpucnn ms", "GFLOP/s",
                  "PyTorch ms", "GFLOP/s", "gpucnn / PyTorch"], rows)


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so
    that a reader never sees half a file (``gpucnn.io.write_atomic``: a symlink's target is
    replaced; a directory, FIFO, device or read-only file is refused)."""
    from gpucnn.io import write_atomic as _write

    _write(path, lambda f: f.write(text), "w", op="gpucnn.bench --out")
