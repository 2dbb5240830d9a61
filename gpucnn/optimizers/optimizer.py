"""The optimizer base class: Keras 3's step (clipping, decoupled weight decay, the update,
the step counter), the learning rate or its schedule, and the per-parameter slots."""
from __future__ import annotations

import numpy as np

from gpucnn import backend
from gpucnn.autograd import Tensor
from gpucnn.kernels import has
from gpucnn.optimizers import schedules
from gpucnn.optimizers.schedules import LearningRateSchedule
from gpucnn.optimizers._args import number

#: A step's updates are tagged ``(step + 1) * _PER_STEP + position`` (position from 1, in launch
#: order), so tags grow with every update and a flag holding one names its step and tensor.
_PER_STEP = 1 << 20


class NonFiniteUpdateError(FloatingPointError, ValueError):
    """An update was refused: a gradient or a new weight was not finite."""


class Optimizer:
    """Base class. Keras's common arguments: ``learning_rate`` (a float >= 0 or a
    ``LearningRateSchedule``), ``weight_decay`` (decoupled; None or 0: none), ``clipnorm``,
    ``clipvalue``, ``global_clipnorm`` (at most one), ``name``; an ``iterations`` counter.

    A subclass names its slots in ``_slot_spec`` and defines ``_update(ks, p, g, lr, wd)``.
    """

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None):
        owner = type(self).__name__
        self._learning_rate = None
        self.learning_rate = learning_rate
        self.weight_decay = number(weight_decay or 0.0, "weight_decay", owner)
        clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        given = {k: v for k, v in clips.items() if v is not None}
        if len(given) > 1:
            raise ValueError(f"{owner}: only one of clipnorm, clipvalue and global_clipnorm can "
                             f"be set, got {given}")
        for k, v in clips.items():
            setattr(self, k, None if v is None else number(v, k, owner, lo_open=True))
        self.name = name or owner
        self.iterations = 0
        self._slots = {}  # id(param) -> (param, slot arrays in _slot_spec() order)
        self._no_decay_ids = set()
        self._no_decay_names = ()
        self._flag = None     # the kernel set's refusal flag (an int64 array of one element)
        self._names = []      # [(first step, weights in launch order, their ids)] to the read
        self._guard = {}

    # -- learning rate ---------------------------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        """The learning rate of the next step: the float given, or the schedule at
        ``iterations``. Setting it is refused when the optimizer was made with a schedule."""
        lr = self._learning_rate
        return float(lr(self.iterations)) if isinstance(lr, LearningRateSchedule) else lr

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        owner = type(self).__name__
        if isinstance(value, LearningRateSchedule):
            self._learning_rate = value
            return
        if isinstance(self._learning_rate, LearningRateSchedule):
            raise TypeError(f"{owner}: this optimizer was made with the schedule "
                            f"{self._learning_rate!r} as its learning_rate, so its learning rate "
                            f"cannot be set to {value!r}; make the optimizer with a float "
                            "learning_rate to change it during training")
        self._learning_rate = number(value, "learning_rate", owner)

    @property
    def schedule(self):
        """The ``LearningRateSchedule`` the optimizer was made with, or None."""
        lr = self._learning_rate
        return lr if isinstance(lr, LearningRateSchedule) else None

    # -- weight decay --------------------------------------------------------------------------
    def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
        """Spare weights from the decay: those in ``var_list`` (Tensors) and those whose name
        (``"C1/bias"``) contains one of the strings in ``var_names`` (``["bias"]``)."""
        self._no_decay_ids = {id(t) for t in (var_list or ())}
        self._no_decay_names = tuple(str(s) for s in (var_names or ()))

    def _decays(self, p) -> bool:
        if id(p) in self._no_decay_ids:
            return False
        name = getattr(p, "name", None) or ""
        return not any(s in name for s in self._no_decay_names)

    # -- slots -------------------------------------------------------------------------------------
    def _slot_spec(self) -> tuple:
        """``((name, initial value), ...)``: the slots each parameter gets."""
        return ()

    def _slot_arrays(self, p) -> tuple:
        spec = self._slot_spec()
        entry = self._slots.get(id(p))
        if (entry is None or entry[0] is not p or len(entry) != len(spec) + 1
                or type(entry[1]) is not type(p.data)):
            # new parameter (or one moved to another backend: its state starts afresh)
            xp = backend.xp()
            entry = (p, *[xp.full_like(p.data, init) for _, init in spec])
            self._slots[id(p)] = entry
        return entry[1:]

    def slot_names(self) -> tuple:
        """The names of the slots each parameter gets (Keras's names), in order."""
        return tuple(name for name, _ in self._slot_spec())

    def get_slot_arrays(self, named_params) -> dict:
        """``{"<path>/<slot>": host array}`` for ``[(path, Tensor)]``: the state a parameter has,
        or the initial state for one not updated yet (what its first update would create)."""
        spec = self._slot_spec()
        if not spec:
            return {}
        ks = backend.kernels()
        out = {}
        for path, p in named_params:
            entry = self._slots.get(id(p))
            if entry is not None and entry[0] is p and len(entry) == len(spec) + 1:
                arrays = [np.array(ks.to_host(a), copy=True) for a in entry[1:]]
            else:
                arrays = [np.full(p.shape, init, dtype=p.dtype) for _, init in spec]
            for (name, _), a in zip(spec, arrays):
                out[f"{path}/{name}"] = a
        return out

    def set_slot_arrays(self, named_params, arrays) -> None:
        """Give each parameter of ``[(path, Tensor)]`` the slots ``arrays["<path>/<slot>"]``
        (as ``get_slot_arrays`` returns them), copied to the active backend. Every array is
        checked before any is set."""
        spec = self._slot_spec()
        problems = []
        for path, p in named_params:
            for name, _ in spec:
                a = arrays.get(f"{path}/{name}")
                if a is None:
                    problems.append(f"missing: {path}/{name} {p.shape}")
                elif tuple(a.shape) != tuple(p.shape) or a.dtype != p.dtype:
                    problems.append(f"{path}/{name}: expected {p.shape} {p.dtype}, got "
                                    f"{tuple(a.shape)} {a.dtype}")
        if problems:
            raise ValueError(f"{type(self).__name__}.set_slot_arrays: the slots do not match "
                             "the parameters; nothing was set:\n  " + "\n  ".join(problems))
        if not spec:
            return
        ks = backend.kernels()
        for path, p in named_params:
            self._slots[id(p)] = (p, *[ks.xp.array(ks.asarray(arrays[f"{path}/{name}"]),
                                                   copy=True) for name, _ in spec])

    # -- one step ------------------------------------------------------------------------------------
    def apply_gradients(self, params) -> None:
        """One update of every Tensor in ``params`` that has a ``.grad`` (also accepts Keras'
        list of ``(grad, param)`` pairs): clipping, weight decay and the update as the module
        docstring says; ``iterations`` then counts one more step."""
        ks = backend.kernels()
        ps, gs = [], []
        for p in params:
            g, p = p if isinstance(p, tuple) else (p.grad, p)
            if g is not None:
                ps.append(p)
                gs.append(g.data if isinstance(g, Tensor) else ks.asarray(g))
        if ps:
            lr = self.learning_rate
            gs = self._clip(gs, ks.xp)
            groups = {0.0: (ps, gs)}    # one multi-tensor launch per weight decay (MULTI tensors)
            if self.weight_decay:
                groups = {}
                for p, g in zip(ps, gs):
                    group = groups.setdefault(self.weight_decay if self._decays(p) else 0.0,
                                              ([], []))
                    group[0].append(p)
                    group[1].append(g)
            self._log_names([p for group, _ in groups.values() for p in group])
            if not isinstance(self._flag, ks.xp.ndarray):
                self._flag = ks.xp.zeros(1, np.int64)
            tag = (self.iterations + 1) * _PER_STEP + 1
            many = has(ks, "multi_update") and type(self)._update_many is not Optimizer._update_many
            for wd, (ps, gs) in groups.items():
                if many:
                    self._guard = {"flag": self._flag, "tag": tag}
                    self._update_many(ks, ps, gs, lr, wd)
                    tag += len(ps)
                    continue
                for p, g in zip(ps, gs):
                    self._guard = {"flag": self._flag, "tag": tag}
                    self._update(ks, p, g, lr, wd)
                    tag += 1
        self.iterations += 1
        if self._flag_on_host():
            self.check_updates()

    def _flag_on_host(self) -> bool:
        """Whether reading the refusal flag is free (host memory): then every step reads it."""
        return isinstance(self._flag, np.ndarray)

    def _log_names(self, order):
        # the weights, named only when an update was refused; a new entry when the order changes
        ids = tuple(map(id, order))
        if not self._names or self._names[-1][2] != ids:
            self._names.append((self.iterations, tuple(order), ids))

    def check_updates(self, op=None) -> None:
        """Raise ``NonFiniteUpdateError`` when an update since the last check was refused (the
        kernels leave a weight as it was where its gradient or new value is not finite, and
        every later update until this read): the error names the first refused weight and step.
        ``apply_gradients`` calls it at once when the flag is in host memory; on a device
        ``fit`` and ``train_on_batch`` call it where they read the loss, so it adds no wait."""
        flag = self._flag
        tag = 0 if flag is None else int(backend.kernels().to_host(flag)[0])
        if tag:
            flag[...] = 0
        names, self._names = self._names, self._names[-1:]
        if not tag:
            return
        step, pos = divmod(tag, _PER_STEP)
        seen = [ps for first, ps, _ in names if first < step]
        name = f"tag {tag}"
        if seen and pos <= len(seen[-1]):
            name = getattr(seen[-1][pos - 1], "name", None) or f"weight {pos - 1}"
        raise NonFiniteUpdateError(
            f"{op or type(self).__name__}: the update of {name!r} at optimizer step {step} was "
            "refused: its gradient or new value is not finite there, so those elements kept "
            "their values, and every update after it until now was refused too (the weights are "
            "those of that step). Try a lower learning rate, a larger epsilon or clipnorm, or "
            "check the data for extreme values")

    step = apply_gradients

    def _clip(self, grads, xp):
        """The gradients clipped as Keras clips them (new arrays; the inputs are not changed)."""
        if self.clipnorm is not None:
            out = []
            for g in grads:
                c = g.dtype.type(self.clipnorm)
                norm = xp.sqrt(xp.sum(g * g))                        # ||g||
                out.append(g * c / xp.maximum(norm, c))              # g * c / max(||g||, c)
            return out
        if self.global_clipnorm is not None:
            dt = np.result_type(*[g.dtype for g in grads])
            c = dt.type(self.global_clipnorm)
            norm = xp.sqrt(sum(xp.sum(g * g) for g in grads))        # N of all gradients
            with np.errstate(divide="ignore", invalid="ignore"):
                # c * min(1/N, 1/c); a NaN or infinite N makes every gradient NaN, as in Keras
                scale = c * xp.minimum(1 / norm, 1 / c) + (norm - norm)
            return [g * scale.astype(g.dtype) for g in grads]
        if self.clipvalue is not None:
            return [xp.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    def _update(self, ks, p, g, lr, wd):  # pragma: no cover - abstract
        raise NotImplementedError

    def _update_many(self, ks, ps, gs, lr, wd):
        """The update of many parameters at once, on a kernel set with ``multi_update``
        (a subclass that defines it gets one launch per dozen tensors instead of one each)."""
        raise NotImplementedError

    # -- configuration -----------------------------------------------------------------------------
    #: The subclass's own settings, attributes of its constructor arguments' names, that
    #: ``get_config`` adds after the common ones.
    _config_keys = ()

    def get_config(self) -> dict:
        """The settings (``learning_rate`` and the rest) as a dict, without the step counter."""
        lr = self._learning_rate
        return {"name": self.name,
                "learning_rate": schedules.serialize(lr) if isinstance(lr, LearningRateSchedule)
                else lr,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                "clipvalue": self.clipvalue, "global_clipnorm": self.global_clipnorm,
                **{k: getattr(self, k) for k in self._config_keys}}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """The optimizer ``get_config`` describes (a schedule given as a dict is rebuilt)."""
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"],
                                                           custom_objects)
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


__all__ = ["Optimizer", "NonFiniteUpdateError"]
