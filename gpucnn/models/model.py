"""``Model``: a network of layers with Keras' training API (``compile``, ``fit``, ``evaluate``,
``predict``), ``summary()`` and weights on disk.

Subclass it for a custom network: assign layers (or other models) to attributes in ``__init__``
and write ``call(self, x, training=False)`` (``forward`` is accepted too)::

    class Autoencoder(models.Model):
        def __init__(self):
            super().__init__(name="autoencoder")
            self.encoder = models.Sequential([layers.Conv2D(8, 3, strides=2, padding="same",
                                                            activation="relu")], name="encoder")
            self.decoder = models.Sequential([layers.Conv2DTranspose(1, 3, strides=2, padding="same",
                                                                     activation="sigmoid")], name="decoder")

        def call(self, x, training=False):
            return self.decoder(self.encoder(x, training), training)

Weights are named by their path: ``"C1/kernel"`` in a ``Sequential``, ``"encoder/conv2d/kernel"``
inside a sub-model. Layer names are unique within their parent; unnamed layers get Keras' default
names (``conv2d``, ``conv2d_1``, ...).
"""
from __future__ import annotations

import inspect

from gpucnn import backend, io
from gpucnn.autograd import Tensor, no_grad
from gpucnn.layers.base import Layer, assign, fmt_shape
from gpucnn.layers.registry import register_model
from gpucnn.models.training import TrainingMixin


def _cells(fields, positions):
    line, start = "", 0
    for i, (text, end) in enumerate(zip(fields, positions)):
        cell = (" " if i == 0 else "") + str(text)
        width = end - start
        line += cell.ljust(width) if len(cell) < width else cell + " "
        start = len(line) if len(line) > end else end
    return line.rstrip()


def _summary_lines(model, line_length=None, positions=None) -> list:
    """``model.summary()``: the Keras table of layers, output shapes and parameter counts."""
    line_length = line_length or 65
    positions = positions or [0.45, 0.85, 1.0]
    if positions[-1] <= 1:
        positions = [int(line_length * p) for p in positions]
    lines = [f'Model: "{model.name}"', "_" * line_length,
             _cells(["Layer (type)", "Output Shape", "Param #"], positions), "=" * line_length]
    shown = set()
    for layer in model.layers:
        shape = "?" if layer.output_shape is None else fmt_shape(layer.output_shape)
        params = f"{layer.count_params():,}" if layer.built else "0 (unbuilt)"
        if id(layer) in shown:              # a layer used again: its weights are counted once
            params = "0 (shared)"
        shown.add(id(layer))
        lines.append(_cells([f"{layer.name} ({type(layer).__name__})", shape, params], positions))
    trainable = sum(t.size for t in model.trainable_weights)
    frozen = sum(t.size for t in model.non_trainable_weights)
    lines += ["=" * line_length,
              f"Total params: {trainable + frozen:,}",
              f"Trainable params: {trainable:,}",
              f"Non-trainable params: {frozen:,}",
              "_" * line_length]
    return lines


class Model(TrainingMixin, Layer):
    """Base class of ``Sequential`` and of custom networks (see the module docstring)."""

    _wrap_build = False
    _is_model = True

    def __init__(self, *args, name=None, **kwargs):
        if args:
            raise TypeError("Model(inputs, outputs) (Keras' functional API) is not supported: subclass "
                            "Model and define call(self, x, training=False), or use Sequential([...])")
        super().__init__(name=name, **kwargs)
        self.stop_training = False
        self.history = None
        self.optimizer = None
        self.loss = None
        self.compiled_metrics = []
        self._takes_training = None

    @property
    def layers(self) -> list:
        """The direct sublayers, in the order they were assigned."""
        return self._sublayers()

    def get_layer(self, name=None, index=None):
        """A direct sublayer by name or position."""
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"model '{self.name}' has no layer named {name!r}; it has "
                         f"{[la.name for la in self.layers]}")

    # -- calling ---------------------------------------------------------------------------------
    def call(self, x, training=False):
        fwd = getattr(self, "forward", None)
        if fwd is None:
            raise NotImplementedError(f"{type(self).__name__} must define call(self, x, training=False) "
                                      "(or forward)")
        if self._takes_training is None:
            params = inspect.signature(fwd).parameters
            self._takes_training = "training" in params or any(
                p.kind is p.VAR_KEYWORD for p in params.values())
        return fwd(x, training=training) if self._takes_training else fwd(x)

    def _build_from(self, input_shape):
        if type(self).build is not Model.build:  # a build() written by the user
            self.build(input_shape)
        self.built = True

    def build(self, input_shape):
        """Build every layer by running the model once on zeros of ``input_shape`` (batch 1)."""
        self._shape_pass(tuple(input_shape))

    def _shape_pass(self, shape):
        s = (None,) + tuple(shape[1:])
        if s[1:] != self._in_shape or self._out_shape is None:
            if None in s[1:]:
                raise ValueError(f"model '{self.name}': cannot build for input shape {s}: every axis "
                                 "but the batch must be known")
            with no_grad():
                self(Tensor(backend.xp().zeros((1,) + s[1:], dtype=self.dtype)), training=False)
        out = self._out_shape
        return None if out is None else (shape[0],) + tuple(out[1:])

    def compute_output_shape(self, input_shape):
        return self._shape_pass(input_shape)

    def _require_built(self, what: str):
        if not self.built:
            raise ValueError(f"model '{self.name}' has not been built yet, so {what} is not possible: "
                             "build it with model.build((None, *input_shape)), call it on a batch of "
                             "data, or give its first layer an input_shape")

    @property
    def metrics_names(self) -> list:
        """``["loss", <metric names>]`` once compiled (the order of ``evaluate``'s results)."""
        return ["loss"] + [m.name for m in self.compiled_metrics] if self.loss is not None else []

    def count_params(self) -> int:
        """The number of scalars in all the model's weights (an error before the model is built)."""
        self._require_built("count_params()")
        return int(sum(t.size for t in self.weights))

    # -- summary -----------------------------------------------------------------------------------
    def summary(self, line_length=None, positions=None, print_fn=None):
        """Print the Keras table (layer name and type, output shape, parameters, totals).

        ``print_fn`` (default ``print``) is called once per line. Returns the table as a string
        when ``print_fn`` is given, None otherwise (Keras prints and returns nothing).
        """
        self._require_built("summary()")
        lines = _summary_lines(self, line_length, positions)
        if print_fn is None:
            print("\n".join(lines))
            return None
        for line in lines:
            print_fn(line)
        return "\n".join(lines)

    # -- configuration and whole-model saving ---------------------------------------------------------
    def get_config(self) -> dict:
        """A subclass of ``Model``: its constructor arguments (Keras's rule for subclassed
        models). The default is ``{"name": ...}`` when the constructor takes a ``name`` (or
        ``**kwargs``) and ``{}`` otherwise; a constructor with other arguments needs a
        ``get_config`` of its own for ``load_model`` to rebuild the model."""
        params = inspect.signature(type(self).__init__).parameters
        takes_name = "name" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        return {"name": self.name} if takes_name else {}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """The model ``get_config`` describes (fresh weights)."""
        return cls(**config)

    def save(self, filepath, overwrite=True) -> None:
        """Write the whole model to ``filepath``: the architecture (JSON from each layer's
        ``get_config``), the weights, and the compile settings with the optimizer's state, so
        that ``gpucnn.models.load_model(filepath)`` continues training exactly where it stopped.
        One ``.npz`` archive, never pickled, written atomically (``gpucnn.models.saving``).
        ``overwrite`` as in ``save_weights``: True (Keras's default) replaces a read-only file
        too, None replaces a file unless it is read-only, False never replaces one."""
        from gpucnn.models import saving

        saving.save_model(self, filepath, overwrite=overwrite)

    def __reduce__(self):
        """Pickling (and ``copy.deepcopy``) goes through the file ``save`` writes: an ``.npz``
        archive with no code in it, plus the classes of the model's layers by reference."""
        from gpucnn.models import saving

        return saving.from_bytes, saving.to_bytes(self)

    # -- weights -------------------------------------------------------------------------------------
    def _weight_table(self) -> list:
        """``[(path, Tensor)]`` for every weight, in layer order; a weight reached twice (a layer
        used twice) is listed once, under its first path."""
        out = [(short, t) for short, t, _ in self._weights]
        seen = {id(t) for _, t in out}
        for c in self._sublayers():
            out.extend((path, t) for path, t, _ in c._named_weights("", seen))
        return out

    def _trainable_table(self) -> list:
        """The trainable weights of ``_weight_table`` (the optimizer's, by path)."""
        ids = {id(t) for t in self.trainable_weights}
        return [(path, t) for path, t in self._weight_table() if id(t) in ids]

    def save_weights(self, filepath, overwrite=None) -> None:
        """Write every weight to ``filepath`` as a ``.npz`` archive (see ``gpucnn.io``), atomically.

        An existing file is replaced unless it is read-only; ``overwrite=True`` replaces a
        read-only file too (keeping its mode), ``overwrite=False`` never replaces a file. A
        symlink is followed (its target is replaced); a directory, FIFO or device is refused."""
        self._require_built("save_weights()")
        import os

        if overwrite is False and os.path.exists(filepath):
            raise FileExistsError(f"save_weights: {os.fspath(filepath)!r} exists and overwrite=False")
        io.save_arrays(filepath, self._host_weights("save_weights"), overwrite=overwrite is True)

    def _host_weights(self, op, prefix="") -> dict:
        """``{prefix + path: host array}`` of every weight (an error when two share a path)."""
        ks = backend.kernels()
        table = self._weight_table()
        arrays = {prefix + path: ks.to_host(t.data) for path, t in table}
        if len(arrays) != len(table):
            raise ValueError(f"{op}: model '{self.name}' has weights with the same path; give its "
                             "layers unique names")
        return arrays

    def load_weights(self, filepath) -> None:
        """Read weights saved by ``save_weights`` (or the weights of a whole model written by
        ``save``). Names, shapes and dtypes are checked for every weight before any is assigned:
        a file that does not match leaves the model unchanged."""
        self._require_built("load_weights()")
        from gpucnn.models import saving

        arrays = saving.weights_in(io.load_arrays(filepath))   # a Model.save file: its weights
        table = self._weight_table()
        io.check_arrays(f"load_weights({str(filepath)!r})",
                        {path: (t.shape, t.dtype) for path, t in table}, arrays)
        for path, t in table:
            assign(t, arrays[path])


register_model(Model, base=True)
