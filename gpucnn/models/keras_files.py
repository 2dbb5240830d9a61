"""Keras model files: Keras 3's ``.keras`` archives and ``.h5`` whole-model files (Keras 3's and
tf.keras 2.x's) read into gpucnn models, and ``.keras`` archives written for Keras 3.

``load_model`` tells them apart by their first bytes, not their names: an ``.h5`` file is HDF5
(``\\x89HDF``); a ``.keras`` file is a zip archive whose first member is ``metadata.json``,
``config.json`` or ``model.weights.h5`` (gpucnn's own ``.npz`` files are zip archives too, of
``.npy`` members). What they hold:

- ``.keras``: ``config.json`` (the model's class, its layers and their configs, and the
  ``compile_config``) and ``model.weights.h5``, in which each layer's variables sit under
  ``layers/<snake_case class name>[_<n>]/vars/<i>`` (``layers/conv2d_1/vars/0``: the second
  Conv2D's kernel) and the optimizer's under ``optimizer/vars/<i>``: the step counter, the
  learning rate (unless a schedule gives it), then the slots, in Keras 3's order (Adam's
  ``momentum`` and ``velocity`` in turns per weight, other optimizers one slot after another);
- ``.h5``: the config in the ``model_config`` attribute, the compile settings in
  ``training_config``, each layer's weights under ``model_weights/<layer name>`` in the order of
  its ``weight_names``, the optimizer's under ``optimizer_weights`` by name
  (``Adam/m/C1/kernel:0`` in tf.keras 2, ``adam/<model>_C1_kernel_momentum`` in Keras 3).

Nothing in a file runs: configs are read as JSON into gpucnn's classes (``keras_config``), and
weights as arrays with h5py (the ``keras`` extra). Every array's shape is compared with the
model's (the weights' shapes from the config before the model is made, the declared sizes of
the archive's members with the bytes the file has) and the whole file is checked before any
weight is assigned.
"""
from __future__ import annotations

import contextlib
import io as _io
import json
import os
import zipfile
import zlib
from datetime import datetime

import numpy as np

from gpucnn import backend, io
from gpucnn import random as _random
from gpucnn.layers.base import assign, snake_case
from gpucnn.models.keras_config import (Pending, read_compile, read_layer, weight_shapes,
                                        write_compile, write_layer)
from gpucnn.optimizers import Adam

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
KERAS_MEMBERS = ("metadata.json", "config.json", "model.weights.h5")
KERAS_VERSION = "3.15.1"          # the Keras whose files gpucnn's are checked against
_MAX_JSON = 64 << 20
_MAX_DEFLATE = 1100               # deflate expands at most ~1032 times


def kind(path) -> str | None:
    """``"keras"``, ``"h5"`` or None (not a Keras file) from the first bytes of ``path``."""
    if not os.path.isfile(path):                   # a FIFO would block the read
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(30 + 64)
    except OSError:
        return None
    if head.startswith(HDF5_MAGIC):
        return "h5"
    if head.startswith(b"PK\x03\x04") and len(head) >= 30:
        n = int.from_bytes(head[26:28], "little")          # the first member's name
        if head[30:30 + n].decode("latin-1") in KERAS_MEMBERS:
            return "keras"
    return None


@contextlib.contextmanager
def random_state_kept():
    """Building a model draws initial weights from gpucnn's generator; a loaded model replaces
    them, so the generator is put back as it was (a resumed ``fit`` shuffles as it would have)."""
    gen = _random.generator()
    state = gen.bit_generator.state
    try:
        yield
    finally:
        gen.bit_generator.state = state


def _h5py(where):
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{where}: Keras files hold their weights in HDF5, which needs h5py: "
                          "pip install 'gpucnn[keras]' (or pip install h5py)") from None
    return h5py


def _open_h5(h5py, source, where):
    try:
        return h5py.File(source, "r")
    except (OSError, ValueError) as e:
        raise ValueError(f"{where} is not a readable HDF5 file (truncated or corrupted?): "
                         f"{e}") from None


def _read_zip(path, where):
    """``(metadata, config, weights bytes)`` of a ``.keras`` archive, every member's declared
    size checked against the bytes the file has before it is read."""
    bad = f"{where}: {path!r} is a Keras .keras archive that cannot be read (truncated or " \
          "corrupted?)"
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{bad}: {e}") from None
    with z:
        infos = {i.filename: i for i in z.infolist()}
        missing = [n for n in KERAS_MEMBERS[1:] if n not in infos]
        if missing:
            raise ValueError(f"{where}: {path!r} is not a Keras model archive: expected members "
                             f"{list(KERAS_MEMBERS)}, found {sorted(infos)}")
        size = os.path.getsize(path)
        for name in KERAS_MEMBERS:
            i = infos.get(name)
            most = i and i.compress_size * (1 if i.compress_type == zipfile.ZIP_STORED
                                             else _MAX_DEFLATE)
            if i and (i.header_offset + i.compress_size > size or i.file_size > most
                      or (name.endswith(".json") and i.file_size > _MAX_JSON)):
                raise ValueError(f"{bad}: its member {name} declares {i.file_size} bytes "
                                 f"({i.compress_size} stored), more than the {size}-byte file "
                                 "can hold")
        try:
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in infos else {}
            config = json.loads(z.read("config.json"))
            blob = z.read("model.weights.h5")
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as e:
            raise ValueError(f"{bad}: {type(e).__name__}: {e}") from None
    if not isinstance(config, dict) or not isinstance(meta, dict):
        raise ValueError(f"{where}: {path!r}: config.json and metadata.json must each hold a "
                         f"JSON object, got {type(config).__name__} and {type(meta).__name__}")
    return meta, config, blob


def _json_attr(f, name, where):
    raw = f.attrs.get(name)
    if raw is None:
        return None
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError as e:
        raise ValueError(f"{where}: the attribute {name!r} is not valid JSON: {e}") from None


# -- where each layer's weights are -----------------------------------------------------------

def keras_paths(layers, prefix="") -> list:
    """``[(path, layer)]``: where Keras 3 keeps each layer's variables in ``model.weights.h5``
    (``layers/<snake_case class>``, ``_1``, ``_2``... for the next of a class; nested
    Sequentials inside), for a list of layers or ``Pending`` models."""
    used, out = {}, []
    for layer in layers:
        cls = layer.cls if isinstance(layer, Pending) else type(layer)
        if cls.__name__ == "InputLayer":
            continue
        base = snake_case(cls.__name__)
        n = used[base] = used.get(base, -1) + 1
        path = f"{prefix}layers/{base}" + (f"_{n}" if n else "")
        out.append((path, layer))
        inner = layer.layers if isinstance(layer, Pending) else (
            layer.layers if cls.__name__ == "Sequential" else [])
        out.extend(keras_paths(inner, path + "/"))
    return out


def _own(layer):
    return [t for _, t, _ in layer._weights]


def _datasets(f, fmt, path, layer):
    """The HDF5 datasets that hold ``layer``'s weights, in order (None: its group is missing)."""
    if fmt == "keras":
        return _numbered(f.get(f"{path}/vars"))
    g = f.get(f"model_weights/{layer.name}")
    if g is None:
        return None
    return [g[n.decode() if isinstance(n, bytes) else n] for n in g.attrs.get("weight_names", [])]


def _numbered(g):
    """The datasets ``0``, ``1``, ... of the group ``g`` (None when there is no group)."""
    if g is None:
        return None
    if set(g) != {str(i) for i in range(len(g))}:
        raise ValueError(f"{g.file.filename}: {g.name} holds {sorted(g)}; Keras numbers its "
                         f"variables 0 to {len(g) - 1} (a damaged file?)")
    return [g[str(i)] for i in range(len(g))]


def _precheck(pending, f, fmt, where):
    """The weights' shapes the config gives, against the file's, before the model is made."""
    first = pending.layers[0] if pending.layers else None
    declared = getattr(first, "_declared", None)
    shape = None if declared is None else (None, *declared)
    table = keras_paths(pending.layers) if fmt == "keras" else [
        (la.name, la) for la in pending.layers if type(la).__name__ != "InputLayer"]
    for path, layer in table:
        if isinstance(layer, Pending):
            return
        want, shape = weight_shapes(layer, shape)
        if want is None:
            return
        got = [ds.shape for ds in _datasets(f, fmt, path, layer) or []]
        if got != want:
            raise ValueError(f"{where}: layer {layer.name!r} ({type(layer).__name__}): its config "
                             f"makes weights {want}, the file holds {got} at {path}; nothing "
                             "was loaded")


def _read(ds, shape, dtype, label, problems):
    """The data of ``ds`` when it has ``shape`` and a float type (else a problem noted)."""
    if ds.shape != tuple(shape) or ds.dtype.kind not in "fiu":
        problems.append(f"{label}: model {tuple(shape)}, file {ds.shape} {ds.dtype}")
        return None
    try:
        return np.asarray(ds[()], dtype=dtype)
    except (OSError, ValueError) as e:
        problems.append(f"{label}: unreadable ({e})")
        return None


def _weights(f, fmt, model, problems):
    """``[(Tensor, array)]`` of every weight of ``model`` from the file."""
    if fmt == "keras":
        table = [(path, la, _own(la)) for path, la in keras_paths(model.layers)]
    else:
        table = [(f"model_weights/{la.name}", la, la.weights) for la in model.layers]
    out = []
    for path, layer, tensors in table:
        found = _datasets(f, fmt, path, layer) or []
        if len(found) != len(tensors):
            problems.append(f"{path} (layer {layer.name!r}, {type(layer).__name__}): model "
                            f"{[t.shape for t in tensors]}, file {[d.shape for d in found]}")
            continue
        out += [(t, _read(d, t.shape, t.dtype, d.name, problems)) for t, d in zip(tensors, found)]
    return out


# -- the optimizer's variables ----------------------------------------------------------------

def slot_order(opt, trainable) -> list:
    """``[("<path>/<slot>", Tensor)]`` in the order of Keras 3's optimizer variables."""
    names = opt.slot_names()
    groups = ((("momentum", "velocity"), ("velocity_hat",)) if isinstance(opt, Adam)
              else tuple((n,) for n in names))
    return [(f"{p}/{s}", t) for g in groups for p, t in trainable for s in g if s in names]


_ABBREVIATIONS = {"momentum": "m", "velocity": "v", "velocity_hat": "vhat"}   # tf.keras 2


def _h5_slots(f, opt, model, order):
    """``(iterations, learning rate, [datasets])`` of an ``.h5`` file's optimizer weights."""
    found, group = {}, f.get("optimizer_weights")
    if group is not None:
        group.visititems(lambda n, o: found.update({n: o}) if hasattr(o, "shape") else None)

    def one(*ends):
        hits = [o for n, o in found.items() if any(n == e or n.endswith("/" + e) for e in ends)]
        return hits[0] if len(hits) == 1 else None

    slots = []
    for key, _ in order:
        path, slot = key.rsplit("/", 1)
        slots.append(one(f"{_ABBREVIATIONS.get(slot, slot)}/{path}:0", f"{slot}/{path}:0",
                         f"{model.name}_{path.replace('/', '_')}_{slot}"))
    return one("iteration:0", "iteration"), one("learning_rate"), slots


def _optimizer_state(f, fmt, opt, model, problems, keras2=False):
    """``(iterations, learning rate, {path/slot: array})`` from the file, or None (the file
    keeps no state). tf.keras 2's ``.keras`` files have no learning-rate variable."""
    order = slot_order(opt, model._trainable_table())
    if fmt == "keras":
        found = _numbered(f.get("optimizer/vars")) or []
        has_lr = opt.schedule is None and not keras2
        it, lr = (found + [None])[0], found[1] if has_lr and found[1:] else None
        slots = found[1 + has_lr:]
        if not slots:
            slots = [None] * len(order)
        elif len(slots) != len(order):
            problems.append(f"optimizer/vars: {type(opt).__name__} of this model has "
                            f"{len(order)} slot variables {[k for k, _ in order]}, the file "
                            f"{len(slots)}; load with compile=False to skip them")
            return None
    else:
        it, lr, slots = _h5_slots(f, opt, model, order)
    if it is None:
        return None
    got = {}
    if any(s is not None for s in slots):
        for (key, t), ds in zip(order, slots):
            if ds is None:
                problems.append(f"optimizer slot {key}: missing from the file")
            else:
                got[key] = _read(ds, t.shape, t.dtype, f"optimizer slot {key} ({ds.name})",
                                 problems)
    lr, it = (None if d is None else _read(d, (), dt, d.name, problems)
              for d, dt in ((lr, np.float64), (it, np.int64)))
    return (None if it is None else int(it)), (None if lr is None else float(lr)), got


# -- load_model and save ----------------------------------------------------------------------

def load_keras(path, custom_objects=None, compile=True):
    """The model of a Keras ``.keras`` or ``.h5`` file (see the module docstring); called by
    ``gpucnn.models.load_model`` for such files."""
    path = os.fspath(path)
    where = f"load_model({path!r})"
    fmt, keras2 = kind(path), False
    h5py = _h5py(where)
    if fmt == "keras":
        meta, spec, blob = _read_zip(path, where)
        keras2 = str(meta.get("keras_version", "")).startswith("2.")
        f = _open_h5(h5py, _io.BytesIO(blob), f"{where}: its model.weights.h5")
        compiled, at = spec.get("compile_config"), "config.json"
    else:
        f = _open_h5(h5py, path, f"{where}: {path!r}")
        spec, at = _json_attr(f, "model_config", where), "model_config"
        compiled = _json_attr(f, "training_config", where)
        if spec is None:
            f.close()
            raise ValueError(f"{where}: {path!r} is an HDF5 file without a 'model_config' "
                             "attribute: weights alone, not a Keras model; build the model in "
                             "code first")
    with f:
        pending = read_layer(spec, at, custom_objects=custom_objects)
        if not isinstance(pending, Pending):
            raise ValueError(f"{where}: the file's model is a single layer "
                             f"({spec.get('class_name')}), not a Sequential model")
        _precheck(pending, f, fmt, where)
        with random_state_kept():                # a loaded model's weights are not drawn
            model = pending.assemble()
            shape = (spec.get("config") or {}).get("build_input_shape")
            if not model.built and shape:
                model.build(tuple(shape))
        problems = []
        weights = _weights(f, fmt, model, problems)
        opt = loss = None
        if compile and compiled:
            opt, loss, metrics = read_compile(compiled, f"{at}: compile settings",
                                              custom_objects)
            opt_state = _optimizer_state(f, fmt, opt, model, problems, keras2)
    if problems:
        raise ValueError(f"{where}: the file's arrays do not match its model ({len(problems)} "
                         "problems); nothing was loaded:\n  " + "\n  ".join(problems))
    for t, a in weights:
        assign(t, a)
    if opt is not None:
        model.compile(optimizer=opt, loss=loss, metrics=metrics)
        if opt_state is not None:
            opt.iterations, lr, slots = opt_state
            if lr is not None and np.float32(lr) != np.float32(opt.learning_rate):
                opt.learning_rate = lr             # changed since compile (a callback)
            if slots:
                opt.set_slot_arrays(model._trainable_table(), slots)
    return model


def save_keras(model, path, overwrite=False) -> str:
    """Write ``model`` as a Keras 3 ``.keras`` archive (through ``gpucnn.io.write_atomic``;
    ``overwrite`` replaces a read-only file too)."""
    h5py = _h5py("save")
    path = os.fspath(path)
    if type(model).__name__ != "Sequential":
        raise ValueError(f"save({path!r}): a Keras file can hold a Sequential model; model "
                         f"'{model.name}' is a {type(model).__name__} (save it as .npz)")
    config = write_layer(model)
    compiled = write_compile(model)
    if compiled is not None:
        config["compile_config"] = compiled
    ks = backend.kernels()
    blob = _io.BytesIO()
    with h5py.File(blob, "w") as f:
        f.create_group("vars").attrs["name"] = model.name
        for where, layer in keras_paths(model.layers):
            g = f.create_group(f"{where}/vars")
            g.attrs["name"] = layer.name
            for i, t in enumerate(_own(layer)):
                g.create_dataset(str(i), data=np.asarray(ks.to_host(t.data)))
        opt = model.optimizer
        if compiled is not None:
            g = f.create_group("optimizer/vars")
            g.attrs["name"] = opt.name
            head = [np.int64(opt.iterations)] + ([np.float32(opt.learning_rate)]
                                                   if opt.schedule is None else [])
            order = slot_order(opt, model._trainable_table())
            arrays = opt.get_slot_arrays(model._trainable_table())
            for i, a in enumerate(head + [arrays[k] for k, _ in order]):
                g.create_dataset(str(i), data=a)
    meta = {"keras_version": KERAS_VERSION, "date_saved": datetime.now().strftime(
        "%Y-%m-%d@%H:%M:%S"), "saved_by": "gpucnn"}

    def write(out):
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("metadata.json", json.dumps(meta))
            z.writestr("config.json", json.dumps(config))
            z.writestr("model.weights.h5", blob.getvalue(), zipfile.ZIP_STORED)

    return io.write_atomic(path, write, overwrite=overwrite, op="save")


__all__ = ["kind", "load_keras", "save_keras", "keras_paths", "slot_order"]
