"""Whole-model files: ``model.save(path)`` and ``load_model(path)``.

A model file is one NumPy ``.npz`` archive, written with ``allow_pickle=False`` and read the same
way (loading never runs code from the file), through ``gpucnn.io.write_atomic`` (a reader sees the
old file or the whole new one, never half of it). It holds:

- ``__gpucnn_model__``: a JSON text (a 0-d string array) with ``format`` (``"gpucnn.model"``),
  ``format_version``, the architecture (``{"class_name": ..., "config": ...}``, the config built
  from each layer's ``get_config()``, with the input shape the model was built for), the compile
  settings (optimizer, loss and metrics, each as its class name and config), the optimizer's
  step counter and slot names, and ``random_state``: what orders the batches and draws the
  dropout masks (``gpucnn.random.get_state``), which the loaded model's next ``fit`` takes up,
  so that it goes on exactly as the saving process would have;
- ``weights/<path>``: every weight, by its path in the model (``weights/C1/kernel``);
- ``optimizer/<path>/<slot>``: the optimizer's state of every trainable weight
  (``optimizer/C1/kernel/momentum``; see ``Optimizer.get_slot_arrays``).

``load_model`` builds the model from the JSON on the active backend (without touching the random
generator of ``gpucnn.random``; each weight a layer creates is charged to the bytes the file's
arrays hold, so a crafted architecture is refused before it allocates, as are entries whose
declared sizes exceed the file and a description nested over ``MAX_DEPTH``), checks every
array against it (names, shapes, dtypes), and only
then assigns weights and optimizer state: a file with an unknown layer type, a newer format
version, or missing or extra arrays is refused with a ValueError that names the file and lists
what was expected against what it holds. ``Model.load_weights`` also reads the weights of such a
file.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from gpucnn import io, losses as _losses, metrics as _metrics
from gpucnn import optimizers as _optimizers
from gpucnn import random as _random
from gpucnn.layers.base import assign
from gpucnn.layers.registry import (WeightBudgetError, deserialize_layer, model_class,
                                    weight_budget)
from gpucnn.models import keras_files

FORMAT = "gpucnn.model"
FORMAT_VERSION = 1
HEADER_KEY = "__gpucnn_model__"
WEIGHTS = "weights/"
SLOTS = "optimizer/"


# -- architecture -----------------------------------------------------------------------------

def model_config(model) -> dict:
    """``{"class_name", "config", "build_input_shape"}`` of a built model (a ValueError naming
    the layer when a setting cannot be written)."""
    shape = model.input_shape
    return {"class_name": type(model).__name__, "config": model.get_config(),
            "build_input_shape": None if shape is None else list(shape)}


def _build(spec, custom_objects, where, nbytes):
    """The model ``spec`` describes, its weights charged to the ``nbytes`` the file holds."""
    name = spec.get("class_name")
    cls = model_class(name, custom_objects, where)
    with keras_files.random_state_kept(), weight_budget(nbytes, where):
        try:
            model = cls.from_config(dict(spec.get("config") or {}), custom_objects)
        except (TypeError, ValueError) as e:
            if str(e).startswith(where) or isinstance(e, WeightBudgetError):
                raise
            raise type(e)(f"{where}: cannot rebuild model {name} from its config "
                          f"{spec.get('config')}: {e}") from None
        shape = spec.get("build_input_shape")
        if not model.built and shape is not None:
            model.build(tuple(shape))
    return model


# -- compile settings -------------------------------------------------------------------------

def _loss_config(loss):
    if isinstance(loss, _losses.LossFunctionWrapper):
        return {"class_name": "function", "function": getattr(loss.fn, "__name__", None),
                "name": loss.name}
    return {"class_name": type(loss).__name__, "config": loss.get_config()}


def _loss_from(d, custom_objects, where):
    name = d.get("class_name")
    custom = custom_objects or {}
    if name == "function":
        fn = custom.get(d.get("function"))
        if fn is None:
            raise ValueError(f"{where}: the model was compiled with the loss function "
                             f"{d.get('function')!r}, which a file cannot hold; give it in "
                             f"custom_objects={{{d.get('function')!r}: ...}} or load with "
                             "compile=False")
        return _losses.LossFunctionWrapper(fn, name=d.get("name"))
    cls = custom.get(name) or getattr(_losses, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, _losses.Loss)):
        raise ValueError(f"{where}: unknown loss {name!r}; expected a class of gpucnn.losses or "
                         "one given in custom_objects")
    return cls.from_config(dict(d.get("config") or {}))


def _metric_config(m):
    d = {"class_name": type(m).__name__, "name": m.name}
    if isinstance(m, _metrics.BinaryAccuracy):
        d["threshold"] = m.threshold
    return d


def _metric_from(d, custom_objects, where):
    name = d.get("class_name")
    cls = (custom_objects or {}).get(name) or getattr(_metrics, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, _metrics.Metric)):
        raise ValueError(f"{where}: unknown metric {name!r}; expected a class of gpucnn.metrics "
                         "or one given in custom_objects")
    kwargs = {k: v for k, v in d.items() if k != "class_name"}
    return cls(**kwargs)


# -- saving -----------------------------------------------------------------------------------

def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"a model config value must be JSON data, got {v!r} ({type(v).__name__})")


def save_model(model, filepath, overwrite=True) -> str:
    """Write ``model`` whole to ``filepath`` (see the module docstring); returns the path."""
    op = "save"
    model._require_built("save()")
    path = os.fspath(filepath)
    if overwrite is False and os.path.exists(path):
        raise FileExistsError(f"{op}: {path!r} exists and overwrite=False")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{op}: the folder {folder!r} does not exist")
    if path.endswith(".keras"):                        # Keras 3's format (keras_files)
        return keras_files.save_keras(model, path, overwrite=overwrite is True)
    arrays = {k: np.array(a, copy=True) for k, a in model._host_weights(op, WEIGHTS).items()}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model_config(model),
              "compile": None, "optimizer_state": None,
              "random_state": _random.get_state()}
    opt = model.optimizer
    if opt is not None:
        header["compile"] = {
            "optimizer": _optimizers.serialize(opt),
            "loss": None if model.loss is None else _loss_config(model.loss),
            "metrics": [_metric_config(m) for m in model.compiled_metrics]}
        header["optimizer_state"] = {"iterations": int(opt.iterations),
                                     "slots": list(opt.slot_names())}
        for key, a in opt.get_slot_arrays(model._trainable_table()).items():
            arrays[SLOTS + key] = a
    text = json.dumps(header, default=_json_default)
    arrays[HEADER_KEY] = np.array(text)
    return io.write_atomic(path, lambda f: np.savez(f, allow_pickle=False, **arrays),
                           overwrite=overwrite is True, op=op)


# -- loading ----------------------------------------------------------------------------------

#: Weight bytes a file's architecture may ask for beyond those its arrays hold (a file that
#: does not match is then refused by the array check, which lists every difference).
SLACK = 1 << 26

#: How deep a model file's JSON description may nest (a Sequential in a Sequential counts 3).
MAX_DEPTH = 64


def _depth_checked(text: str, where: str) -> str:
    """``text`` after making sure its JSON nests at most ``MAX_DEPTH`` deep (the parser
    recurses: a 3,000-deep header would end in a RecursionError)."""
    depth = 0
    plain = text.replace("\\\\", "").replace('\\"', "")  # escaped quotes do not end strings
    for part in plain.split('"')[::2]:                 # the text outside strings
        for ch in part:
            depth += (ch in "[{") - (ch in "]}")
            if depth > MAX_DEPTH:
                raise ValueError(f"{where}: the model description nests deeper than "
                                 f"{MAX_DEPTH} levels; it is not one gpucnn writes")
    return text


def _header(arrays, path, where) -> dict:
    if HEADER_KEY not in arrays:
        if io.FORMAT_KEY in arrays:
            raise ValueError(f"{where}: {path!r} holds weights alone (written by save_weights), "
                             "not a whole model; build the model in code and call "
                             f"model.load_weights({path!r})")
        raise ValueError(f"{where}: {path!r} is not a gpucnn model file: expected an entry "
                         f"{HEADER_KEY!r}, found {sorted(arrays)[:8]}")
    raw = arrays[HEADER_KEY]
    try:
        header = json.loads(_depth_checked(str(raw[()]), where))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: the model description in {path!r} is not valid JSON: {e}") \
            from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{where}: {path!r} is not a gpucnn model file: expected format "
                         f"{FORMAT!r}, got {header.get('format') if isinstance(header, dict) else header!r}")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{where}: {path!r} has no valid format_version: expected an int from "
                         f"1 to {FORMAT_VERSION}, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{where}: {path!r} is model format version {version}, written by a "
                         f"newer gpucnn; this gpucnn reads versions up to {FORMAT_VERSION}: "
                         "update gpucnn to load it")
    return header


def weights_in(arrays: dict) -> dict:
    """The weights of a file's arrays: ``{path: array}`` of a whole-model file (its
    ``weights/`` entries), or the arrays themselves for a ``save_weights`` file."""
    if HEADER_KEY not in arrays:
        return arrays
    return {k[len(WEIGHTS):]: v for k, v in arrays.items() if k.startswith(WEIGHTS)}


def load_model(filepath, custom_objects=None, compile=True):
    """The model ``model.save(filepath)`` wrote: architecture, weights and, with ``compile``
    (default), its compile settings and the optimizer's state (``fit`` continues where it
    stopped). ``custom_objects`` maps the class names of your own layers, Model subclasses,
    losses, metrics, optimizers and schedules (and loss functions by name) to them. A file that
    does not match is refused with a ValueError before anything is assigned."""
    path = os.fspath(filepath)
    where = f"load_model({path!r})"
    if keras_files.kind(path):                         # a Keras .keras or .h5 file
        return keras_files.load_keras(path, custom_objects, compile)
    arrays = io.read_npz(path, where, "model file")
    header = _header(arrays, path, where)
    model = _build(header.get("model") or {}, custom_objects, where,
                   SLACK + sum(a.nbytes for k, a in arrays.items() if k.startswith(WEIGHTS)))

    compiled = header.get("compile") if compile else None
    opt = loss = None
    metrics = []
    if compiled:
        try:
            opt = _optimizers.deserialize(compiled["optimizer"], custom_objects)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: cannot rebuild the optimizer: {e}") from None
        if compiled.get("loss") is not None:
            loss = _loss_from(compiled["loss"], custom_objects, where)
            metrics = [_metric_from(d, custom_objects, where) for d in compiled.get("metrics", [])]

    table = model._weight_table()
    expected = {WEIGHTS + p: (t.shape, t.dtype) for p, t in table}
    trainable = model._trainable_table()
    state = header.get("optimizer_state") if opt is not None else None
    if state is not None:
        for p, t in trainable:
            for slot in opt.slot_names():
                expected[f"{SLOTS}{p}/{slot}"] = (t.shape, t.dtype)
    given = {k: v for k, v in arrays.items() if k != HEADER_KEY
             and (state is not None or not k.startswith(SLOTS))}
    io.check_arrays(where, expected, given)
    resume = header.get("random_state")
    try:
        if resume is not None:
            _random.checked_state(resume)
    except ValueError as e:
        raise ValueError(f"{where}: the random state in {path!r}: {e}") from None

    for p, t in table:
        assign(t, given[WEIGHTS + p])
    if opt is not None:
        if loss is not None:
            model.compile(optimizer=opt, loss=loss, metrics=metrics)
        else:
            model.optimizer = opt
        if state is not None:
            opt.set_slot_arrays(trainable, {k[len(SLOTS):]: v for k, v in given.items()
                                            if k.startswith(SLOTS)})
            opt.iterations = int(state.get("iterations", 0))
    model._random_state = resume       # taken up by the next fit (the global generator waits)
    return model


def to_bytes(model) -> tuple:
    """``(file bytes, classes by name)``: what pickling ``model`` keeps (``Model.__reduce__``):
    the file ``save`` writes, with the classes of its layers (pickled by reference, as pickle
    does) for ``from_bytes`` to rebuild it with."""
    classes, todo = {}, [model]
    while todo:
        layer = todo.pop()
        classes[type(layer).__name__] = type(layer)
        todo.extend(layer._sublayers())
    loss = getattr(model, "loss", None)
    if isinstance(loss, _losses.LossFunctionWrapper):
        classes[getattr(loss.fn, "__name__", "")] = loss.fn
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.npz")
        save_model(model, path)
        with open(path, "rb") as f:
            return f.read(), classes


def from_bytes(data: bytes, classes: dict):
    """The model ``to_bytes`` describes (``load_model`` of its file); a copy, unlike a resumed
    model, leaves the random state where it is (its next ``fit`` draws as any model's)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.npz")
        with open(path, "wb") as f:
            f.write(data)
        model = load_model(path, custom_objects=classes)
    model._random_state = None
    return model


__all__ = ["save_model", "load_model", "weights_in", "deserialize_layer", "model_config",
           "to_bytes", "from_bytes", "FORMAT", "FORMAT_VERSION"]
