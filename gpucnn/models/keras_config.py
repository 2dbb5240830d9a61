"""Keras model configs to gpucnn models and back (the JSON half of ``gpucnn.models.keras_files``).

Reading takes the configs Keras 3 and tf.keras 2.x write, with Keras's argument names and
defaults. A Keras setting gpucnn has no equivalent for (a regularizer, a constraint, ``groups``,
a mixed-precision dtype) is refused unless it holds Keras's default; a class gpucnn does not
have is refused unless ``custom_objects`` gives it (as Keras does), and a ``Lambda`` layer is
always refused (its config is Python bytecode, which gpucnn never runs). Each refusal names the
class, the layer and where its config sits in the file (``config.json: config.layers[3]``).
Writing gives the config Keras 3 writes for the same model (``Sequential`` models of gpucnn's
layers, nested ones included).
"""
from __future__ import annotations

import inspect

import numpy as np

from gpucnn import initializers, losses as _losses, optimizers as _optimizers
from gpucnn.layers.registry import layer_classes, model_class

# Keras settings gpucnn's constructors do not take, accepted only at these (Keras's default) values
_DEFAULTS = {"groups": 1, "kernel_regularizer": None, "bias_regularizer": None,
             "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None,
             "quantization_config": None, "lora_rank": None, "lora_alpha": None,
             "sparse": False, "ragged": False, "optional": False, "input_axes": None,
             "output_axes": None, "use_ema": False, "loss_scale_factor": None,
             "gradient_accumulation_steps": None, "jit_compile": False, "decay": 0.0,
             "is_legacy_optimizer": False, "reduction": ("sum_over_batch_size", "auto"),
             "ignore_class": None, "label_smoothing": 0.0, "axis": -1}
_IGNORED = {"ema_momentum", "ema_overwrite_frequency"}   # meaningless while use_ema is False
_WEIGHTLESS = {"InputLayer", "Flatten", "Dropout", "Activation", "Reshape", "MaxPooling2D",
               "AveragePooling2D"}


def _params(cls) -> set:
    """The keyword arguments ``cls(...)`` takes, following ``**kwargs`` up the base classes."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" not in klass.__dict__:
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names - {"self"}


def _dtype(value, where):
    name = value.get("config", {}).get("name") if isinstance(value, dict) else value
    if not isinstance(name, str) or name not in ("float32", "float64", "float16"):
        raise ValueError(f"{where}: dtype {name!r} is not supported; expected float32, float64 "
                         "or float16 (gpucnn has no mixed precision)")
    return name


def _default(value, default) -> bool:
    return value in default if isinstance(default, tuple) else value == default


def _arguments(cls, config, where) -> dict:
    """Keyword arguments of ``cls`` from a Keras config: the ones ``cls`` takes, the others
    checked to hold Keras's default."""
    accepted, out = _params(cls), {}
    for key, value in config.items():
        if key == "dtype":
            value = _dtype(value, where)
        elif key.endswith("_initializer") and isinstance(value, dict):
            value = _instance(value, initializers, initializers.Initializer, "initializer",
                              "a class of gpucnn.initializers", f"{where}.{key}")
        elif isinstance(value, dict) and key == "learning_rate":
            value = _instance(value, _optimizers.schedules, _optimizers.LearningRateSchedule,
                              "learning-rate schedule", "one of ExponentialDecay, "
                              "PiecewiseConstantDecay, CosineDecay", f"{where}.learning_rate")
        if key in accepted:
            out[key] = value
        elif key not in _IGNORED and not (key in _DEFAULTS and _default(value, _DEFAULTS[key])):
            want = f" (gpucnn takes only Keras's default, {_DEFAULTS[key]!r})" \
                if key in _DEFAULTS else ""
            raise ValueError(f"{where}: the Keras setting {key}={value!r} has no gpucnn "
                             f"equivalent{want}")
    return out


def _instance(d, module, base, what, expected, where):
    """The instance of the ``base`` class of ``module`` that Keras's ``d`` describes."""
    name = d.get("class_name")
    cls = getattr(module, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{where}: unknown {what} {name!r}; expected {expected}")
    return cls(**_arguments(cls, d.get("config") or {}, where))


class Pending:
    """A Keras ``Sequential`` read from a config, its layers made (no weights yet) but the model
    not: ``assemble()`` makes it once the file's arrays were checked against ``weight_shapes``."""

    def __init__(self, cls, kwargs, layers):
        self.cls, self.kwargs, self.layers = cls, kwargs, layers

    def assemble(self):
        layers = [la.assemble() if isinstance(la, Pending) else la for la in self.layers]
        model = self.cls(layers=layers, name=self.kwargs.get("name"))
        if self.kwargs.get("trainable") is False:         # Keras: a frozen model freezes all
            model.trainable = False
        return model


def read_layer(d, file, at="", custom_objects=None):
    """The gpucnn layer (or ``Pending`` model) of a Keras ``{"class_name", "config"}`` dict
    found in ``file`` at the JSON path ``at`` (named in errors)."""
    if not isinstance(d, dict) or not isinstance(d.get("class_name"), str):
        raise ValueError(f"{file}: {at or 'the model'}: expected {{'class_name': ..., "
                         f"'config': ...}}, got {str(d)[:80]}")
    name, config = d["class_name"], dict(d.get("config") or {})
    where = f"{file}: {at or 'the model'} ({name} {config.get('name')!r})"
    custom = custom_objects or {}
    if name == "Lambda":
        raise ValueError(f"{where}: a Lambda layer holds Python code, which gpucnn never runs; "
                         "rebuild the model in code and load the weights alone")
    if name in ("Functional", "Model") and name not in custom:
        raise ValueError(f"{where}: Keras functional models are not supported (gpucnn has "
                         "Sequential and Model subclasses); rebuild it as a Sequential")
    if name == "Sequential" or (name in custom and isinstance(config.get("layers"), list)):
        cls = model_class(name, custom, where)
        inner = f"{at}.config.layers" if at else "config.layers"
        layers = [read_layer(la, file, f"{inner}[{i}]", custom)
                  for i, la in enumerate(config.pop("layers", None) or [])]
        return Pending(cls, config, layers)
    cls = custom.get(name) or layer_classes().get(name)
    if cls is None or name in ("Sequential", "Model"):
        raise ValueError(f"{where}: unknown layer class {name!r}; gpucnn has "
                         f"{sorted(set(layer_classes()) - {'Sequential'})}; give a class of your "
                         f"own in custom_objects={{{name!r}: ...}}")
    try:
        if name in custom:
            return cls.from_config(config)
        if name == "InputLayer":
            shape = config.pop("batch_shape", None) or config.pop("batch_input_shape", None)
            config["shape"] = tuple(shape or (None,))[1:]
        return cls(**_arguments(cls, config, where))
    except (TypeError, ValueError) as e:
        raise type(e)(e.args[0] if str(e).startswith(where) else f"{where}: {e}") from None


def weight_shapes(layer, shape):
    """``[shapes]`` of the weights a built-in layer makes for inputs of ``shape``, and its
    output shape; ``(None, None)`` for a layer whose weights cannot be told from its config."""
    kind = type(layer).__name__
    if kind in _WEIGHTLESS:
        return [], layer.compute_output_shape(shape)
    if kind not in ("Conv2D", "Conv2DTranspose", "Dense") or shape is None:
        return None, None
    n = layer.units if kind == "Dense" else layer.filters
    kernel = ((shape[-1], n) if kind == "Dense" else (*layer.kernel_size, shape[-1], n)
              if kind == "Conv2D" else (*layer.kernel_size, n, shape[-1]))
    return [kernel] + [(n,)] * layer.use_bias, layer.compute_output_shape(shape)


# -- compile settings -------------------------------------------------------------------------

def read_compile(c, where, custom_objects=None):
    """``(optimizer, loss, metrics)`` for ``model.compile`` from Keras 3's ``compile_config``
    or tf.keras 2's ``training_config``."""
    d = c.get("optimizer") or c.get("optimizer_config") if isinstance(c, dict) else None
    if not isinstance(d, (str, dict)):
        raise ValueError(f"{where}: expected an optimizer given by name or as {{'class_name': "
                         f"..., 'config': ...}}, got {str(d)[:80]} (or load with compile=False)")
    if isinstance(d, str):
        opt = _optimizers.get(d)
    else:
        name = str(d.get("class_name")).replace("Custom>", "")
        cls = (custom_objects or {}).get(name) or getattr(_optimizers, name, None)
        if not (isinstance(cls, type) and issubclass(cls, _optimizers.Optimizer)):
            raise ValueError(f"{where}: optimizer {name!r} is not supported; gpucnn has SGD, Adam,"
                             " AdamW, RMSprop and Adagrad (or load with compile=False)")
        opt = cls(**_arguments(cls, dict(d.get("config") or {}), f"{where}.optimizer ({name})"))
    loss = c.get("loss")
    if isinstance(loss, dict):
        cls = getattr(_losses, str(loss.get("class_name")), None)
        if not (isinstance(cls, type) and issubclass(cls, _losses.Loss)):
            raise ValueError(f"{where}: loss {loss.get('class_name')!r} is not supported (or "
                             "load with compile=False)")
        loss = cls(**_arguments(cls, loss.get("config") or {}, f"{where}.loss"))
    metrics = []
    for m in c.get("metrics") or []:       # tf.keras 2 nests them per output, as wrappers
        for one in (m if isinstance(m, list) else [m]):
            metrics.append(one["config"]["name"] if isinstance(one, dict) else one)
    return opt, loss, metrics


def _keras(module, cls_name, config):
    return {"module": module, "class_name": cls_name, "config": config, "registered_name": None}


def _policy(dtype):
    return _keras("keras", "DTypePolicy", {"name": np.dtype(dtype).name})


def write_compile(model) -> dict | None:
    """Keras 3's ``compile_config`` of a compiled model (None when it is not compiled)."""
    opt = model.optimizer
    if opt is None or model.loss is None:
        return None
    config = opt.get_config()
    if opt.schedule is not None:
        s = opt.schedule
        config["learning_rate"] = _keras("keras.optimizers.schedules", type(s).__name__,
                                         s.get_config())
    loss = model.loss
    if isinstance(loss, _losses.LossFunctionWrapper):
        loss = loss.fn.__name__
    elif not loss.from_logits and isinstance(_losses._BY_NAME.get(loss.name), type) \
            and isinstance(loss, _losses._BY_NAME[loss.name]):
        loss = loss.name                            # compiled with Keras's name for it
    else:                           # Keras's MSE and MAE take no from_logits
        loss = _keras("keras.losses", type(loss).__name__, {
            k: v for k, v in loss.get_config().items()
            if k != "from_logits" or "Crossentropy" in type(loss).__name__})
    return {"optimizer": _keras("keras.optimizers", type(opt).__name__, config), "loss": loss,
            "loss_weights": None, "metrics": [m.name for m in model.compiled_metrics],
            "weighted_metrics": None, "run_eagerly": False, "steps_per_execution": 1,
            "jit_compile": False}


# -- architecture, written --------------------------------------------------------------------

def write_layer(layer) -> dict:
    """Keras 3's ``{"module", "class_name", "config", ...}`` of a gpucnn layer or Sequential."""
    kind = type(layer).__name__
    if kind == "Sequential":
        inputs = [_keras("keras.layers", "InputLayer", {
            "batch_shape": list(layer.input_shape), "dtype": layer.dtype.name,
            "name": getattr(getattr(layer, "_input_layer", None), "name", "input_layer")})]
        config = {"name": layer.name, "trainable": layer.trainable,
                  "dtype": _policy(layer.dtype),
                  "layers": inputs + [write_layer(la) for la in layer.layers],
                  "build_input_shape": list(layer.input_shape)}
        out = _keras("keras", "Sequential", config)
    elif kind in _WEIGHTLESS or kind in ("Conv2D", "Conv2DTranspose", "Dense"):
        config = layer.get_config()
        config.pop("input_shape", None)
        config["dtype"] = _policy(layer.dtype)
        for key, value in config.items():
            if key.endswith("_initializer"):
                config[key] = _keras("keras.initializers", value["class_name"], {
                    k: v for k, v in value["config"].items() if v is not None})
        out = _keras("keras.layers", kind, config)
    else:
        raise ValueError(f"layer '{layer.name}' ({kind}): a Keras file can hold only Sequential "
                         f"models of Keras's layers ({sorted(_WEIGHTLESS)}, Conv2D, "
                         "Conv2DTranspose, Dense); save it with a .npz name instead")
    if layer.input_shape is not None:
        out["build_config"] = {"input_shape": list(layer.input_shape)}
    return out


__all__ = ["Pending", "read_layer", "weight_shapes", "read_compile", "write_compile",
           "write_layer"]
