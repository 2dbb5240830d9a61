"""gpucnn.kernels: kernel sets, arrays in and arrays out.

Two sets implement the same contract, function for function and signature for signature:

- ``numpy_set``: NumPy with BLAS, runs on any CPU.
- ``cuda_set``:  Numba ``@cuda.jit`` kernels on CuPy arrays (NumPy arrays under
  ``NUMBA_ENABLE_CUDASIM=1``, where Numba's simulator runs the very same kernel code).

Kernels know nothing of Tensors or autograd; ``gpucnn.functional`` pairs them into
differentiable ops. Layouts: images ``(N, H, W, C)``, conv kernels ``(KH, KW, C_in, C_out)``,
biases ``(C,)``. Geometry arguments are already normalised by the caller:
``stride = (sh, sw)``, ``pad = (top, bottom, left, right)`` (see ``_geometry``),
``pool = (ph, pw)``. Dtypes: float32 (float64 accepted for gradient checks); an output has
the dtype of the first floating input.

The contract: every set defines each name in ``CONTRACT``, and lists in ``CAPABILITIES`` the
optional groups of ``OPTIONAL`` it offers (threads, split steps, kept conv blocks, ...), whose
functions it then defines too. ``load_set`` checks both; code above the kernels asks
``has(kset, capability)``. A new set is one module keeping this contract, added with
``register_set``: nothing above ``gpucnn.kernels`` changes.

Array module
    ``xp``                                    the array module outputs live in
    ``asarray(a)``                            an array of this set from any array-like (no copy
                                              when already one)
    ``to_host(a)``                            a NumPy array

Convolution (cross-correlation, as every framework computes it)
    ``conv2d_forward(x, w, b, stride, pad, act)``   -> y ``(N, Ho, Wo, C_out)``
        ``b`` may be None; ``act`` in ``ACTIVATIONS`` is applied in the epilogue.
    ``conv2d_backward_input(dy, w, x_shape, stride, pad)``  -> dx of shape ``x_shape``
        (also the transposed convolution: ``conv2d_transpose(x) == backward_input(x)``)
    ``conv2d_backward_weight(x, dy, w_shape, stride, pad)`` -> dw of shape ``w_shape``
    ``bias_grad(dy)``                         -> db, ``dy`` summed over every axis but the last

Pooling (``pad`` cells never win a max and are not counted in a mean)
    ``max_pool_forward(x, pool, stride, pad)``      -> (y, idx); ``idx`` int32, shape of y, the
        flat index ``h * W + w`` of the winning input cell in its ``(n, :, :, c)`` plane: the
        first maximum in row-major window order; a window with a NaN gives NaN and its first
        real cell
    ``max_pool_backward(dy, idx, x_shape, pool, stride, pad)`` -> dx: each dy added to its
        window's winner, in row-major window order (windows may overlap); the geometry is the
        forward's that gave ``idx`` (the cuda set gathers over the windows covering each cell)
    ``avg_pool_forward(x, pool, stride, pad)``      -> y
    ``avg_pool_backward(dy, x_shape, pool, stride, pad)`` -> dx

Activations, elementwise, any shape (``act`` in ``ACTIVATIONS``)
    ``act_forward(x, act)``                   -> y
    ``act_backward(dy, y, act)``              -> dx, from the forward *output* y

Softmax along the last axis of a 2-D ``(rows, K)`` array
    ``softmax_forward(x)``                    -> y
    ``softmax_backward(dy, y)``               -> dx = y * (dy - sum(dy * y))
    ``log_softmax_forward(x)``                -> y
    ``log_softmax_backward(dy, y)``           -> dx = dy - exp(y) * sum(dy)

Losses (``loss`` in ``LOSSES``), Keras 3's: the mean over every element (mse, mae, bce,
bce_logits) or over the rows of ``(rows, K)`` (the cross-entropies); probabilities clipped to
``[1e-7, 1 - 1e-7]`` in their dtype, the gradient passing inside the bounds and on them; ``cce``
divides each row by its sum before the clip, ``sparse_cce`` after it (``log(sum(pc)) -
log(pc[label])``). The sparse ones take integer labels ``(rows,)`` as ``t`` (a label outside
``[0, K)`` makes the mean NaN and adds no one-hot term to its row's gradient); the others a
float ``t`` of ``p``'s shape.
    ``loss_forward(loss, t, p)``              -> (value, a 0-d array; stats, the per-row numbers
        the gradient needs: ``(rows, LOSS_STATS[loss])`` for the cross-entropies, else None)
    ``loss_backward(loss, g, t, p, stats)``   -> dp, the gradient of ``g * value`` (``g`` a 0-d
        array, read on the device)

Dropout, counter-based and identical in both sets for the same ``seed`` and ``counter``
    ``dropout_mask(shape, rate, seed, counter, dtype)`` -> mask, 0 or ``1 / (1 - rate)`` per
        element; element ``i`` (C order) is kept iff ``uniform(seed, counter, i) >= rate`` where
        ``uniform`` is ``random_u32(seed, counter, i) * 2**-32`` of the shared hash in
        ``_rng.py``.

Optimizer updates, in place on the parameter and its slots (``g`` is not modified), each
Keras 3's formula; every one first applies Keras's decoupled weight decay
``p -= p * (lr * weight_decay)`` (none when it is 0); ``lr`` is this step's learning rate.
Every update is checked: an element whose gradient or new weight is not finite keeps its weight
and slots, and the update records its ``tag`` (an int > 0) in ``flag`` (a one-element int64
array of the set) unless a lower tag is there; an update that finds a tag below its own in
``flag`` changes nothing (every update after a refused one is refused until the caller reads
and clears the flag). Without a flag (None) an update that refused an element raises
FloatingPointError. Each takes ``flag=None, tag=1`` after the arguments below; the
``multi_update`` ones tag tensor ``i`` of their lists ``tag + i``.
    ``sgd_update(p, g, v, lr, momentum, nesterov, weight_decay)``  ``v`` may be None when
        momentum == 0
    ``adam_update(p, g, m, v, lr, beta1, beta2, eps, t, weight_decay, vhat=None)``  ``t`` is
        the 1-based step; ``p -= m * alpha / (sqrt(v) + eps)``, ``alpha = lr * sqrt(1 -
        beta2^t) / (1 - beta1^t)``; amsgrad when ``vhat`` (the running max of v) is given
    ``rmsprop_update(p, g, s, lr, rho, eps, weight_decay, u=None, momentum=0.0, mg=None,
        gain=None)``  ``s = rho s + gain g^2`` (gain 1 - rho when None), ``p -= lr g /
        sqrt(s + eps)``; centered (``sqrt(s - mg^2 + eps)``) when ``mg`` is given; momentum
        (``u = momentum u + step; p -= u``) needs ``u``; Adagrad is rho = gain = 1
"""
from __future__ import annotations

import importlib

ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid")
LOSSES = ("mse", "mae", "bce", "bce_logits", "cce", "cce_logits", "sparse_cce",
          "sparse_cce_logits")
#: The row losses' ``stats`` columns: cce (row sum s, sum(dq * q)), cce_logits (row max m,
#: log(sum(exp(z - m))), sum(t)), sparse_cce (sum(pc), pc[label]), sparse_cce_logits (m,
#: sum(exp(z - m))). The elementwise losses keep none.
LOSS_STATS = {"cce": 2, "cce_logits": 3, "sparse_cce": 2, "sparse_cce_logits": 2}

#: What every kernel set defines (the docstring above says what each does).
CONTRACT = (
    "xp", "asarray", "to_host",
    "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "bias_grad",
    "max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward",
    "act_forward", "act_backward",
    "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
    "loss_forward", "loss_backward",
    "dropout_mask",
    "sgd_update", "adam_update", "rmsprop_update",
)

#: The optional capabilities and the functions of each (the module docstring says how a set
#: offers them); code above the kernels asks ``has(kset, name)``, never probes a set for them.
OPTIONAL = {
    # the set runs on the host, its kernels split work over threads of their own
    "threads": ("set_num_threads", "get_num_threads", "num_threads", "serial_kernels",
                "single_threaded_blas"),
    # a training step may be split into parts of the batch computed at once (on threads with
    # data_parallel(fn, n, parts), or on forked processes, the arrays being host memory)
    "split_steps": ("data_parallel",),
    # conv2d_forward_keep(x, w, b, stride, pad, act) -> (y, kept), and
    # conv2d_backward_weight_kept(kept, x, dy, w_shape, stride, pad) -> dw: the forward's
    # intermediate blocks reused by the kernel gradient
    "conv_keep": ("conv2d_forward_keep", "conv2d_backward_weight_kept"),
    # conv_algorithm(what, x_shape, w_shape, stride, pad) -> the name of the method chosen
    "conv_algorithm": ("conv_algorithm",),
    # kernel launches on a device: launch_count(), launch_path(), set_launch_path(path),
    # fell_back() -> {kernel: reason}
    "launches": ("launch_count", "launch_path", "set_launch_path", "fell_back"),
    # allocator_note() -> one line on how the set tunes the C allocator (for reports)
    "allocator": ("allocator_note",),
    # an activation's gradient read where it is consumed, saving launches and passes over dy:
    # conv2d_backward_input_act(dy, y, act, w, x_shape, stride, pad) -> dx,
    # conv2d_backward_weight_bias(x, dy, y, act, w_shape, stride, pad) -> (dw, db),
    # act_backward_bias(dy, y, act) -> (g, db) for a (rows, C) gradient;
    # each equals act_backward then the plain op(s) of the contract
    "fused_backward": ("conv2d_backward_input_act", "conv2d_backward_weight_bias",
                       "act_backward_bias"),
    # one launch updating many tensors with the same hyperparameters:
    # sgd_update_many(ps, gs, vs, lr, momentum, nesterov, weight_decay),
    # adam_update_many(ps, gs, ms, vs, lr, beta1, beta2, eps, t, weight_decay, vhats=None),
    # rmsprop_update_many(ps, gs, ss, lr, rho, eps, weight_decay, us=None, momentum=0.0,
    #                     mgs=None, gain=None): lists of the single updates' arrays
    "multi_update": ("sgd_update_many", "adam_update_many", "rmsprop_update_many"),
    # a function's launches captured once and replayed as a CUDA graph: graph_engine() -> an
    # engine with capture(fn) -> (graph, fn's outputs), launch(graph) and copy(dst, src)
    # (cuda_set/graphs.py says what each does)
    "graphs": ("graph_engine",),
    # the devices of a distributed job: devices() -> an object with device_count(),
    # use_device(i), current_device(), nccl() -> (module, None) or (None, why), pointer(a),
    # stream() (the handle NCCL runs on), record_event(), event_done(ev), synchronize()
    # (cuda_set/_devices.py)
    "devices": ("devices",),
    # whether the set runs on this machine: probe() -> (ok, reason, info), proven once per
    # process; info["simulator"] is true when its kernels run in a simulator on the host (the
    # backend's "auto" never picks such a set)
    "probe": ("probe",),
    # compiled kernels kept on disk: cache_dir() -> the folder, cache_note() -> one line on what
    # an entry depends on, device_cc() -> this machine's (major, minor) or a RuntimeError saying
    # why there is none, fill_cache(cc, jobs=None, rebuild=False) -> {kernel: result}
    "compile_cache": ("cache_dir", "cache_note", "device_cc", "fill_cache"),
    # scatter_add(a, index, values): a[index] += values in place on the set's arrays, repeated
    # indices adding up (the gradient of indexing with an array)
    "scatter_add": ("scatter_add",),
    # data streamed to a device: streams() -> an engine with free_bytes(), pinned(shape, dtype),
    # empty(shape, dtype), upload(pairs, after) -> event, record(), wait(event), finish(event)
    # and read(a) (the set's to_host); cuda_set/streams.py says what each does
    "streams": ("streams",),
    # what measurement tools (gpucnn.bench, the GPU check) need of the set's kernels beyond the
    # contract: instruments() -> an object with kernels(), build(spec, cc), launches_through(wrap),
    # small_launches(simulator), conv_kernels(name), ... (cuda_set/_instruments.py lists them)
    "instruments": ("instruments",),
}

_SETS = {"numpy": ".numpy_set", "cuda": ".cuda_set"}
_loaded: dict = {}


def set_names() -> tuple:
    """The names of the kernel sets ``load_set`` knows."""
    return tuple(_SETS)


def register_set(name: str, module) -> None:
    """Make ``module`` (an imported module or a ``types.ModuleType`` built in code) the kernel
    set ``name``; it is checked against the contract as ``load_set`` checks the built-in ones."""
    if not isinstance(name, str) or not name.isidentifier() or name == "auto":
        raise ValueError(f"register_set: expected a kernel set name (an identifier, not 'auto'), "
                         f"got {name!r}")
    check_set(name, module)
    _SETS[name] = module
    _loaded[name] = module


def unregister_set(name: str) -> None:
    """Forget a set added with ``register_set`` (the built-in ones stay)."""
    if name in ("numpy", "cuda"):
        raise ValueError(f"unregister_set: {name!r} is built in")
    _SETS.pop(name, None)
    _loaded.pop(name, None)


def check_set(name: str, module) -> None:
    """TypeError naming every contract function, or declared capability's function, that
    ``module`` lacks, and every capability it declares that is not in ``OPTIONAL``."""
    missing = [n for n in CONTRACT if not hasattr(module, n)]
    caps = tuple(getattr(module, "CAPABILITIES", ()))
    unknown = [c for c in caps if c not in OPTIONAL]
    missing += [f for c in caps if c in OPTIONAL for f in OPTIONAL[c] if not hasattr(module, f)]
    if missing or unknown:
        raise TypeError(f"kernel set {name!r} does not keep the contract: missing {missing}, "
                        f"unknown capabilities {unknown} (known: {sorted(OPTIONAL)})")


def has(kset, capability: str) -> bool:
    """Whether the kernel set ``kset`` offers ``capability`` (a key of ``OPTIONAL``)."""
    if capability not in OPTIONAL:
        raise ValueError(f"has: unknown capability {capability!r}; expected one of "
                         f"{sorted(OPTIONAL)}")
    return capability in getattr(kset, "CAPABILITIES", ())


def load_set(name: str):
    """The kernel set ``name`` ('numpy', 'cuda' or one added by ``register_set``), checked
    against the contract."""
    if name not in _SETS:
        raise ValueError(f"unknown kernel set {name!r}; expected one of {set_names()}")
    module = _loaded.get(name)
    if module is None:
        where = _SETS[name]
        module = importlib.import_module(where, __name__) if isinstance(where, str) else where
        check_set(name, module)
        _loaded[name] = module
    return module


__all__ = ["ACTIVATIONS", "CONTRACT", "LOSSES", "LOSS_STATS", "OPTIONAL", "check_set", "has",
           "load_set", "register_set", "set_names", "unregister_set"]
