"""A set of forked worker processes computing the parts of every training step with this one
(``WorkerSet``, used by the runner ``forked.Forked``), and its lifetime.

How: the parameters move into anonymous shared memory (``mmap``, in place of each ``Tensor``'s
array, values unchanged) and the process forks ``parts - 1`` workers, which inherit the model.
Each step the parent copies each worker's rows of the batch into that worker's shared input
buffer and sends it the step over a pipe; every process runs its part (``step.run_part``) on its
own core with single-threaded kernels; the workers write their gradients, loss and outputs into
shared buffers; the parent adds the gradients and updates the parameters in place, which the
workers see at their next step. Dropout keys are drawn by the parent before the step and sent
along (``gpucnn.functional._split``).

Lifetime. A set of workers (``WorkerSet``) belongs to the thread that forked it and serves one
training call at a time (a lease); it is kept on its model (``model._fit_workers``) and serves
the next epochs and ``fit`` calls of that thread while the model stays the same
(``fingerprint``: the layers and their settings, the weights' identity, memory and trainable
flags, the loss, the batch geometry); otherwise it is replaced. One set lives per process at
most; it ends when another model trains, a step fails, ``Model.release_workers()`` is called,
its thread ends, or the interpreter exits. When its model is collected the set is only queued
(a finalizer may run inside any code the garbage collector interrupts, so it makes no system
call) and ends at the next ``fit`` that starts workers, at ``release_workers()``, or at exit.
Keeping them saves each ``fit`` call the fork and the workers' first-touch page faults (15-25 ms
measured). The parameters stay in the shared memory, which is ordinary memory to NumPy.

What keeps the workers safe: ``_worker``.
"""
from __future__ import annotations

import atexit
import gc
import math
import mmap
import os
import signal
import sys
import threading
import time
import warnings
import weakref
from multiprocessing.connection import Pipe

import numpy as np

from gpucnn.parallel import _calls
from gpucnn.parallel import step as _step
from gpucnn.parallel._worker import SPIN_REPLY, die_with_parent, find_prctl, receive, worker_loop

_ALIGN = 64

#: Bytes by which each worker of the last closed set grew its resident memory (its peak resident
#: set, ``VmHWM``, less its resident set when it started); the benchmark adds them to the calling
#: process's own growth. Empty where ``/proc`` cannot tell.
last_growth = []


class _Shared:
    """Arrays laid out in one anonymous shared mapping (inherited by forked workers)."""

    def __init__(self, specs):
        offsets, total = [], 0
        for shape, dtype in specs:
            total = -(-total // _ALIGN) * _ALIGN
            offsets.append(total)
            total += math.prod(shape) * np.dtype(dtype).itemsize
        self.map = mmap.mmap(-1, max(total, 1))
        self.arrays = [np.ndarray(shape, dtype, buffer=self.map, offset=off)
                       for (shape, dtype), off in zip(specs, offsets)]


class _Worker:
    """The parent's handle of one worker: its pipe end, pid and shared buffers."""

    def __init__(self, conn, pid, bufs, shared):
        self.conn, self.pid, self.shared = conn, pid, shared       # shared: keeps the mapping
        self.x, self.y, self.out, self.loss, self.has, self.grads = bufs


def _simple(obj) -> tuple:
    """The plain-valued attributes of ``obj`` (what a worker's copy of it could differ in)."""
    plain = (bool, int, float, str, type(None))
    out = []
    for k, v in sorted(vars(obj).items()):
        if k == "_counter":                    # a seeded Dropout's counter: the parent draws
            continue
        if isinstance(v, plain) or (isinstance(v, tuple) and all(isinstance(e, plain) for e in v)):
            out.append((k, v))
    return tuple(out)


def fingerprint(model, params, *config) -> tuple:
    """What a set of workers was forked with: when it changes (a layer frozen between epochs, a
    weight replaced, another batch size), the workers are started afresh."""
    return (config, type(model.loss), _simple(model.loss),
            tuple((id(layer), type(layer), _simple(layer)) for layer in _step.leaves(model)),
            tuple((id(t), t.data.ctypes.data, t.shape, str(t.dtype), t.requires_grad)
                  for t in model.weights),
            tuple(id(p) for p in params))


# Every pipe end this process holds to a worker, so that a new worker can close the ones it
# inherits (a worker holding another's pipe would keep that pipe open after the parent died).
_ends: "weakref.WeakSet" = weakref.WeakSet()
_sets: "weakref.WeakSet" = weakref.WeakSet()         # every live WorkerSet of this process


class WorkerSet:
    """``parts`` processes computing each step of ``model``'s training (the calling process and
    ``parts - 1`` forked workers); ``close()`` stops the workers. Made only by ``start``."""

    def __init__(self, model, params, max_batch, x_tail, x_dtype, y_tail, y_dtype, out_tail,
                 out_dtype, logits, need_out, parts):
        self.model, self.params, self.logits, self.need_out = model, params, logits, need_out
        self.parts = parts
        self.thread = threading.current_thread()
        self.lessee = None                  # the thread whose training call uses the set now
        share = max_batch - max_batch // parts          # the largest part a worker gets
        weights = model.weights                         # all of them: a callback may set any
        self.weights = _Shared([(t.shape, t.dtype) for t in weights])
        for t, w in zip(weights, self.weights.arrays):
            w[...] = t.data
            t.data = w
        self.key = fingerprint(model, params, max_batch, tuple(x_tail), str(x_dtype),
                               tuple(y_tail), str(y_dtype), logits, need_out, parts)
        self.workers = []
        self._own = None                      # this process's gather buffers (x, y)
        self._owner = os.getpid()
        specs = [((share,) + tuple(x_tail), x_dtype), ((share,) + tuple(y_tail), y_dtype),
                 ((share,) + tuple(out_tail), out_dtype), ((1,), out_dtype),
                 ((len(params),), np.uint8)] + [(p.shape, p.dtype) for p in params]
        try:
            for _ in range(parts - 1):
                self.workers.append(self._spawn(specs))
        except BaseException:
            self.close()
            raise
        _sets.add(self)
        # when this object goes (its model went), its workers are queued for drain()
        self._finalizer = weakref.finalize(self, _defer, [(w.conn, w.pid) for w in self.workers],
                                           self._owner)

    @property
    def alive(self) -> bool:
        """Whether every worker still runs (one may have been killed while idle)."""
        if not self.workers or not self.mine:
            return False
        return not any(_ended(w.pid) for w in self.workers)

    @property
    def mine(self) -> bool:
        """Whether this process started the workers (a forked copy of it must start its own)."""
        return getattr(self, "_owner", None) == os.getpid()

    @property
    def ours(self) -> bool:
        """Whether the calling thread may use the set: this process and this thread forked it
        (the workers die with that thread)."""
        return self.mine and self.thread is threading.current_thread()

    def __deepcopy__(self, memo):
        # a copied model (copy.deepcopy) starts without workers: these belong to the original
        return None

    def __reduce__(self):
        raise TypeError("the worker processes of fit cannot be pickled; call "
                        "model.release_workers() first")

    def _spawn(self, specs):
        """A worker with buffers of ``specs`` (x, y, outputs, loss, gradient flags, gradients)."""
        shared = _Shared(specs)
        bufs = shared.arrays[:5] + [shared.arrays[5:]]
        parent_end, child_end = Pipe()
        parent = os.getpid()
        prctl = find_prctl()
        sys.stdout.flush()
        sys.stderr.flush()
        with warnings.catch_warnings():
            # Python 3.12+ warns on fork in a process with threads; see _worker's docstring.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:                                             # the worker
            code = 1
            try:
                die_with_parent(parent, prctl)
                # Every object inherited from the parent goes to the collector's permanent
                # generation: otherwise each collection walks (and so copies, page by page) the
                # parent's whole heap -- measured 8% slower steps in a process that had imported
                # PyTorch.
                gc.freeze()
                parent_end.close()
                for end in list(_ends):          # other workers' pipes: not this worker's
                    end.close()
                code = worker_loop(child_end, parent, self.model, self.params, self.logits,
                                    self.need_out, *bufs)
            finally:
                os._exit(code)
        child_end.close()
        _ends.add(parent_end)
        return _Worker(parent_end, pid, bufs, shared)

    # -- one step ------------------------------------------------------------------------------
    def step(self, xb, yb, rows=None):
        """Forward and backward of the batch over every process; returns what
        ``step.forward_backward`` returns (the gradients land in ``.grad`` when the loss is
        finite). With ``rows`` (an index array) the batch is ``xb[rows], yb[rows]``, gathered
        straight into each process's buffer."""
        n = xb.shape[0] if rows is None else len(rows)
        parts = min(self.parts, n)
        bounds = [n * k // parts for k in range(parts + 1)]
        keys = self.model._step_keys()
        busy = []
        for k, w in enumerate(self.workers[:parts - 1], 1):
            lo, hi = bounds[k], bounds[k + 1]
            if rows is None:
                w.x[:hi - lo] = xb[lo:hi]
                w.y[:hi - lo] = yb[lo:hi]
            else:
                np.take(xb, rows[lo:hi], axis=0, out=w.x[:hi - lo])
                np.take(yb, rows[lo:hi], axis=0, out=w.y[:hi - lo])
            w.conn.send((lo, hi, n, keys))
            busy.append(w)
        if rows is not None:
            if self._own is None or len(self._own[0]) < bounds[1]:
                self._own = (np.empty((bounds[1],) + xb.shape[1:], xb.dtype),
                             np.empty((bounds[1],) + yb.shape[1:], yb.dtype))
            xb = np.take(xb, rows[:bounds[1]], axis=0, out=self._own[0][:bounds[1]])
            yb = np.take(yb, rows[:bounds[1]], axis=0, out=self._own[1][:bounds[1]])
        try:
            mine = _step.run_part(self.model, xb, yb, 0, bounds[1], n, self.logits, keys)
        finally:
            errors = [e for e in (_reply(w) for w in busy) if e is not None]
        if errors:
            raise RuntimeError("a training worker process failed:\n" + errors[0])
        results = [mine + (bounds[1],)]
        for k, w in enumerate(busy, 1):
            rows_k = bounds[k + 1] - bounds[k]
            # combine keeps the first gradient it meets: a shared buffer is copied to be one
            sink = {id(p): (p, w.grads[i] if id(p) in mine[2] else np.array(w.grads[i]))
                    for i, p in enumerate(self.params) if w.has[i]}
            results.append((w.loss[0], w.out[:rows_k], sink, rows_k))
        return _step.combine(results, self.params, n, self.need_out)

    # -- lifetime ------------------------------------------------------------------------------
    def close(self):
        """Stop the workers; each reports the growth of its resident memory (``last_growth``)."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
        _sets.discard(self)
        # in a fork of the process that started them (a user's own os.fork or multiprocessing)
        # the workers belong to the parent, which keeps using them: they are only forgotten
        if getattr(self, "_owner", os.getpid()) == os.getpid():
            growth = _stop([(w.conn, w.pid) for w in self.workers])
            if self.workers:
                last_growth[:] = growth
        self.workers = []
        self.model, self.params = None, []        # nothing keeps the model alive any more


_current = None          # weak reference to the newest WorkerSet of this process, if any
_pending = []            # (pipe end, pid) of workers whose set was collected: see drain()


def start(model, *args):
    """A new ``WorkerSet`` for ``model`` (arguments as ``WorkerSet``), leased to the calling
    thread; or None when another thread of the process has a gpucnn call open (forking then
    could copy a lock that thread holds) or the current set is in use. The previous set of the
    process ends first: one set per process at most."""
    global _current
    with _calls.exclusive() as alone:
        if not alone:
            return None
        previous = _current() if _current is not None else None
        if previous is not None and not previous.workers:
            previous = None                   # closed already
        if previous is not None and previous.lessee is not None:
            return None                       # a call of this thread still uses it
        drain()                               # sets of collected models end here
        if previous is not None:
            previous.close()
        made = WorkerSet(model, *args)
        made.lessee = threading.current_thread()
        _current = weakref.ref(made)
        return made


def lease(procs) -> bool:
    """Lease ``procs`` to the calling thread's training call; False when it may not serve it
    (another thread forked it, a call uses it, a worker died)."""
    with _calls.exclusive():
        if procs.lessee is not None or not procs.ours:
            return False
        procs.lessee = threading.current_thread()
    if not procs.alive:
        procs.lessee = None
        return False
    return True


def give_back(procs) -> None:
    """End the calling thread's lease of ``procs``."""
    if procs.lessee is threading.current_thread():
        procs.lessee = None


def _defer(handles, owner):
    """The finalizer of a set of workers: queue them for ``drain``. It may run wherever the
    garbage collector interrupts this process, for instance in one of Numba's CUDA-simulator
    threads between the two halves of a shared-array allocation; a system call here would let
    other threads run in that gap, so nothing but a list append happens."""
    if os.getpid() == owner:
        _pending.extend(handles)


def drain() -> None:
    """End the workers queued by collected sets, and the idle sets whose thread has ended (their
    workers were killed with it; this reaps them). Called where a set starts, by
    ``Model.release_workers()``, and at exit."""
    while _pending:
        handles = list(_pending)
        del _pending[:len(handles)]
        _stop(handles)
    for procs in list(_sets):
        if procs.mine and procs.lessee is None and not procs.thread.is_alive():
            procs.close()


atexit.register(drain)       # after weakref.finalize's own exit hook (registered later) runs


def _stop(handles) -> list:
    """End workers given as ``(pipe end, pid)`` (of this process: ``_defer`` and ``close`` ask);
    returns the growth of resident memory each reported."""
    growth = []
    for conn, _ in handles:
        try:
            conn.send(None)
        except (OSError, ValueError):
            pass
    for conn, pid in handles:
        try:
            if conn.poll(5.0):
                growth.append(int(conn.recv()))
        except (EOFError, OSError, TypeError, ValueError):
            pass
        _reap(pid)
        _ends.discard(conn)
        try:
            conn.close()
        except OSError:
            pass
    return growth


def _reply(w):
    """Wait for a worker's answer to its step: None, or the text of its exception."""
    try:
        return receive(w.conn, SPIN_REPLY, lambda: _ended(w.pid))
    except (EOFError, OSError):
        return f"worker process {w.pid} ended without answering"


def _ended(pid) -> bool:
    """Whether worker ``pid`` has exited (reaped by this call, or before it)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:                      # already reaped
        return True


def _reap(pid):
    """Wait (briefly) for a worker to exit, then kill it."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if _ended(pid):
            return
        time.sleep(0.001)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except OSError:
        pass


def release(model) -> None:
    """End the worker set kept on ``model`` (unless a call of another thread uses it)."""
    me = threading.current_thread()
    with _calls.exclusive():
        procs = model.__dict__.get("_fit_workers")
        if procs is None or procs.lessee not in (None, me):
            return
        del model.__dict__["_fit_workers"]
        procs.lessee = me                     # nobody leases it while it closes
    procs.close()
    procs.lessee = None


__all__ = ["WorkerSet", "drain", "fingerprint", "give_back", "last_growth", "lease", "release",
           "start"]
