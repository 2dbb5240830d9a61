"""Sequential and Model: fit/evaluate/predict, the fused loss path, custom models, progress output,
the bad-input errors of issue 4 (and that a failed call changes nothing), and the cuda backend in
Numba's simulator against the numpy backend step for step."""
import io

import numpy as np
import pytest

import gpucnn
from gpucnn import callbacks, layers, metrics, models, optimizers
from gpucnn._progbar import Progbar
from gpucnn.models import NonFiniteLossError


pytestmark = pytest.mark.usefixtures("numpy_backend")


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def small_cnn(classes=3, activation="softmax", input_shape=(8, 8, 1), name="C1", dropout=0.0):
    stack = [layers.Conv2D(4, 3, activation="relu", input_shape=input_shape, name=name),
             layers.MaxPooling2D(), layers.Flatten()]
    if dropout:
        stack.append(layers.Dropout(dropout))
    stack.append(layers.Dense(classes, activation=activation))
    return models.Sequential(stack, name="small")


def blobs(rng, n, classes=3, shape=(8, 8, 1), noise=0.5):
    """Images whose class is a fixed random pattern, plus noise: learnable in a few steps."""
    templates = rng.standard_normal((classes,) + shape).astype(np.float32)
    y = rng.integers(0, classes, n)
    return templates[y] + noise * f32(rng, n, *shape), y


def same_weights(a, b):
    return len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b))


# -- training ---------------------------------------------------------------------------------------
def test_fit_history_validation_split_is_the_last_fraction(rng):
    model = small_cnn()
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    x, y = blobs(rng, 50)
    h = model.fit(x, y, batch_size=8, epochs=2, validation_split=0.2, verbose=0)
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 2 for v in h.history.values()) and h.epoch == [0, 1]
    assert model.history is h
    val = model.evaluate(x[40:], y[40:], verbose=0, return_dict=True)
    assert val["loss"] == pytest.approx(h.history["val_loss"][-1], rel=1e-6)
    assert val["accuracy"] == pytest.approx(h.history["val_accuracy"][-1])


def test_fit_on_a_learnable_problem_gets_it_right(rng):
    model = small_cnn()
    model.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    x, y = blobs(rng, 96)
    h = model.fit(x, y, batch_size=16, epochs=6, validation_data=(x[:30], y[:30]), verbose=0)
    assert h.history["loss"][-1] < 0.5 * h.history["loss"][0]
    assert h.history["accuracy"][-1] > 0.9
    acc = np.mean(model.predict(x, verbose=0).argmax(1) == y)
    assert acc == pytest.approx(model.evaluate(x, y, verbose=0)[1])


def test_fit_in_order_equals_train_on_batch_steps(rng):
    x, y = blobs(rng, 20)
    a = small_cnn()
    a.compile(optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    gpucnn.manual_seed(0)
    b = small_cnn()
    b.compile(optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    assert same_weights(a.get_weights(), b.get_weights())
    h = a.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0)
    losses = [b.train_on_batch(x[i:i + 6], y[i:i + 6]) for i in range(0, 20, 6)]
    for p, q in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)
    sizes = [6, 6, 6, 2]
    assert h.history["loss"][0] == pytest.approx(np.dot(losses, sizes) / 20, rel=1e-6)


def test_training_is_reproducible_with_manual_seed(rng):
    x, y = blobs(rng, 40)

    def train():
        gpucnn.manual_seed(42)
        m = small_cnn(dropout=0.3)
        m.compile("adam", "sparse_categorical_crossentropy")
        m.fit(x, y, batch_size=8, epochs=2, verbose=0)
        return m.get_weights()

    assert same_weights(train(), train())


def test_dropout_changes_training_passes_only(rng):
    model = small_cnn(dropout=0.5)
    x = f32(rng, 6, 8, 8, 1)
    p = model.predict(x, verbose=0)
    np.testing.assert_array_equal(p, model.predict(x, batch_size=4, verbose=0))
    np.testing.assert_array_equal(p, model(x).numpy())
    assert not np.allclose(model(x, training=True).numpy(), p)


@pytest.mark.parametrize("loss,activation,accuracy", [
    ("categorical_crossentropy", "softmax", metrics.CategoricalAccuracy),
    ("binary_crossentropy", "sigmoid", metrics.BinaryAccuracy),
    ("sparse_categorical_crossentropy", "softmax", metrics.SparseCategoricalAccuracy),
])
def test_accuracy_follows_the_loss_and_the_fused_loss_matches(loss, activation, accuracy, rng):
    classes = 1 if loss == "binary_crossentropy" else 3
    model = small_cnn(classes, activation)
    model.compile("rmsprop", loss, ["accuracy"])
    assert isinstance(model.compiled_metrics[0], accuracy)
    assert model._fused_logits()
    x, lab = blobs(rng, 24, 2 if classes == 1 else 3)
    y = {"categorical_crossentropy": np.eye(3, dtype=np.float32)[lab],
         "binary_crossentropy": lab.astype(np.float32).reshape(-1, 1)}.get(loss, lab)
    p = model.predict(x, verbose=0).astype(np.float64)
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    if classes == 1:
        want = -np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))
        want_acc = np.mean((p > 0.5) == (y > 0.5))
    else:
        want = -np.mean(np.log(pc[np.arange(24), lab]))
        want_acc = np.mean(p.argmax(1) == lab)
    got_loss, got_acc = model.evaluate(x, y, batch_size=10, verbose=0)
    assert got_loss == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert got_acc == pytest.approx(want_acc)
    h = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]


def test_mse_on_a_softmax_model_is_not_fused(rng):
    model = small_cnn()
    model.compile("sgd", "mse", ["mae"])
    assert not model._fused_logits()
    x = f32(rng, 5, 8, 8, 1)
    y = np.abs(f32(rng, 5, 3))
    p = model.predict(x, verbose=0).astype(np.float64)
    loss, mae = model.evaluate(x, y, verbose=0)
    assert loss == pytest.approx(np.mean((p - y) ** 2), rel=1e-5)
    assert mae == pytest.approx(np.mean(np.abs(p - y)), rel=1e-5)


def test_compile_names_and_errors():
    model = small_cnn()
    for opt, cls in (("sgd", optimizers.SGD), ("adam", optimizers.Adam), ("rmsprop", optimizers.RMSprop)):
        model.compile(opt, "sparse_categorical_crossentropy", ["accuracy"])
        assert isinstance(model.optimizer, cls)
    for args, match in [(("sgd", "hinge2"), "unknown loss 'hinge2'"),
                        (("sgd",), "a loss is required"),
                        (("sgd", "mse", ["f1"]), "unknown metric 'f1'")]:
        with pytest.raises(ValueError, match=match):
            model.compile(*args)
    with pytest.raises(RuntimeError, match="compiled first"):
        small_cnn().fit(np.zeros((2, 8, 8, 1), np.float32), np.zeros(2, np.int64))


# -- custom models -----------------------------------------------------------------------------------
class Autoencoder(models.Model):
    def __init__(self):
        super().__init__(name="autoencoder")
        self.encoder = models.Sequential([
            layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
            layers.Conv2D(2, 3, strides=2, padding="same", activation="relu")], name="encoder")
        self.decoder = models.Sequential([
            layers.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu"),
            layers.Conv2DTranspose(1, 3, strides=2, padding="same", activation="sigmoid")],
            name="decoder")

    def call(self, x, training=False):
        return self.decoder(self.encoder(x, training), training)


class TwoDense(models.Model):
    def __init__(self):
        super().__init__()
        self.hidden = layers.Dense(8, activation="tanh")
        self.out = layers.Dense(2)

    def forward(self, x):
        return self.out(self.hidden(x))


def test_custom_model_builds_trains_and_names_its_weights(rng):
    model = Autoencoder()
    assert not model.built
    with pytest.raises(ValueError, match="not been built"):
        model.summary()
    model.build((None, 8, 8, 1))
    assert model.output_shape == (None, 8, 8, 1)
    lines = []
    model.summary(print_fn=lines.append)
    assert any(ln.split()[:2] == ["encoder", "(Sequential)"] and "(None, 2, 2, 2)" in ln for ln in lines)
    n = (9 * 4 + 4) + (9 * 4 * 2 + 2) + (9 * 2 * 4 + 4) + (9 * 4 + 1)
    assert f"Total params: {n:,}" in lines and model.count_params() == n
    names = [p for p, _ in model._weight_table()]
    assert names[:2] == ["encoder/conv2d/kernel", "encoder/conv2d/bias"]
    assert "decoder/conv2d_transpose_1/kernel" in names
    x = np.clip(f32(rng, 32, 8, 8, 1) * 0.2 + 0.5, 0, 1)
    model.compile(optimizers.Adam(0.01), "mse")
    h = model.fit(x, x, batch_size=8, epochs=4, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert model.predict(x[:3], verbose=0).shape == (3, 8, 8, 1)


def test_model_with_forward_method(rng):
    model = TwoDense()
    y = model(f32(rng, 3, 5))
    assert y.shape == (3, 2)
    assert [la.name for la in model.layers] == ["dense", "dense_1"]
    assert len(model.trainable_weights) == 4
    model.compile("sgd", "mse")
    model.fit(f32(rng, 8, 5), f32(rng, 8, 2), verbose=0)


def test_custom_model_bad_input_names_the_inner_layer(rng):
    model = Autoencoder()
    model.build((None, 8, 8, 1))
    model.compile("adam", "mse")
    with pytest.raises(ValueError, match=r"predict: layer 'conv2d' \(Conv2D\).*1 channels.*"
                                         r"received \(1, 8, 8, 3\)"):
        model.predict(f32(rng, 4, 8, 8, 3), verbose=0)


# -- bad input ----------------------------------------------------------------------------------------
@pytest.fixture
def compiled(rng):
    model = small_cnn(name="C1")
    model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy", ["accuracy"])
    return model


SHAPE_MSG = (r"model 'small' \(Sequential\): expected input shape \(None, 8, 8, 1\) \(the input "
             r"shape of its first layer 'C1' \(Conv2D\)\), received \(5, 6, 6, 1\)")


def x_with(rng, n, *cells):
    """``n`` samples of shape (8, 8, 1), each ``(index, value)`` of ``cells`` set in them."""
    x = f32(rng, n, 8, 8, 1)
    for index, value in cells:
        x[index] = value
    return x


def labels(*values):
    return np.array(values)


# (method, its arguments from rng, keyword arguments, the error)
BAD_CALLS = [
    ("fit", lambda r: (f32(r, 5, 6, 6, 1), np.zeros(5, np.int64)), {}, "fit: " + SHAPE_MSG),
    ("predict", lambda r: (f32(r, 5, 6, 6, 1),), {}, "predict: " + SHAPE_MSG),
    ("evaluate", lambda r: (f32(r, 5, 8, 8, 2), np.zeros(5, np.int64)), {},
     r"received \(5, 8, 8, 2\)"),
    ("fit", lambda r: (x_with(r, 6), labels(0, 1, 2, 1, 3, 0)), {},
     r"labels must lie in \[0, 3\) for the 3 outputs of model 'small', got values in \[0, 3\] "
     r"\(first bad: y\[4\] = 3\)"),
    ("evaluate", lambda r: (x_with(r, 6), labels(0, 1, 2, -1, 0, 0)), {},
     r"got values in \[-1, 2\]"),
    ("fit", lambda r: (x_with(r, 6), labels(0, 1, 0.5, 1, 0, 0)), {}, "non-integer"),
    ("fit", lambda r: (x_with(r, 6), np.eye(3)[[0, 1, 2, 0, 1, 2]]), {},
     "one-hot rows: use loss='categorical_crossentropy'"),
    ("fit", lambda r: (x_with(r, 6), np.zeros(5, np.int64)), {},
     "fit: x and y have different lengths: 6 samples in x, 5 in y"),
    ("fit", lambda r: (x_with(r, 0), np.zeros(0, np.int64)), {},
     r"fit: the dataset is empty \(x has 0 samples"),
    ("predict", lambda r: (x_with(r, 0),), {}, "predict: the dataset is empty"),
    ("evaluate", lambda r: (x_with(r, 3), np.zeros(4, np.int64)), {},
     "evaluate: x and y have different lengths"),
    ("fit", lambda r: (x_with(r, 1), labels(0)), {"validation_split": 0.5}, "validation_split"),
    ("fit", lambda r: (x_with(r, 4, ((2, 3, 3, 0), np.nan)), np.zeros(4, np.int64)), {},
     r"x holds NaN or infinite values \(first at index \(2, 3, 3, 0\)\)"),
    # +inf and -inf: their sum is NaN, still found
    ("predict", lambda r: (x_with(r, 4, ((0, 0, 0, 0), -np.inf), ((1, 0, 0, 0), np.inf)),), {},
     r"first at index \(0, 0, 0, 0\)"),
    ("fit", lambda r: (x_with(r, 4), np.zeros(4, np.int64)),
     {"validation_data": (x_with(np.random.default_rng(0), 2), labels(0, 7))},
     r"fit \(validation data\): labels must lie in"),
]


@pytest.mark.parametrize("method,args,kwargs,match", BAD_CALLS)
def test_bad_input_is_refused_before_anything_changes(compiled, rng, method, args, kwargs, match):
    before = compiled.get_weights()
    with pytest.raises(ValueError, match=match):
        getattr(compiled, method)(*args(rng), verbose=0, **kwargs)
    assert same_weights(compiled.get_weights(), before), "a failed call changed the weights"
    assert compiled.optimizer.iterations == 0
    big = np.full((4, 8, 8, 1), 3e38, np.float32)     # every value finite, their sum overflows
    assert compiled.predict(big, verbose=0).shape == (4, 3)


def test_model_built_from_data_names_the_layer_that_fails(rng):
    model = models.Sequential([layers.Conv2D(2, 3, name="A"), layers.Conv2D(2, 5, name="B"),
                               layers.Flatten(), layers.Dense(2)])
    model.compile("sgd", "mse")
    model.fit(f32(rng, 4, 9, 9, 1), f32(rng, 4, 2), verbose=0)
    with pytest.raises(ValueError, match=r"fit: layer 'B' \(Conv2D\).*window 5.*H=4"):
        model.fit(f32(rng, 4, 6, 6, 1), f32(rng, 4, 2), verbose=0)
    with pytest.raises(ValueError, match=r"layer 'A' \(Conv2D\): expected input shape "
                                         r"\(batch, height, width, 1\)"):
        model.predict(f32(rng, 4, 9, 9, 3), verbose=0)


def nan_after(calls):
    """A loss that is the mean squared output for ``calls`` calls, then NaN."""
    count = [0]

    def loss(y_true, y_pred):
        count[0] += 1
        sq = (y_pred * y_pred).mean()
        return sq if count[0] <= calls else sq * float("nan")

    return loss


@pytest.mark.parametrize("calls,epochs,match", [    # NaN at the first step: nothing changes
    (0, 2, r"loss is nan at epoch 1/2, step 1/3; training stopped before this step's update"),
    (3 + 2, 4, r"epoch 2/4, step 3/3")])
def test_non_finite_loss_names_epoch_and_step(calls, epochs, match, rng):
    model = small_cnn()
    model.compile(optimizers.SGD(0.1), nan_after(calls))
    before = model.get_weights()
    with pytest.raises(NonFiniteLossError, match=match):
        model.fit(f32(rng, 20, 8, 8, 1), f32(rng, 20, 3), batch_size=8, epochs=epochs, verbose=0)
    assert model.optimizer.iterations == calls
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert same_weights(model.get_weights(), before) == (calls == 0)


# -- progress output ------------------------------------------------------------------------------------
def test_progress_lines_without_a_terminal(compiled, rng, capsys):
    x, y = blobs(rng, 20)
    compiled.fit(x, y, batch_size=8, epochs=2, verbose=1)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2" and len(lines) == 4
    assert "\r" not in out
    assert lines[1].startswith("3/3 [==============================] - ")
    assert "/step - loss: " in lines[1] and " - accuracy: " in lines[1]
    compiled.fit(x, y, batch_size=8, epochs=1, verbose=2, validation_data=(x, y))
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith("3/3 - ") and "val_loss" in line and "=" not in line.split(" - ")[0]
    compiled.fit(x, y, batch_size=8, epochs=1, verbose=0)
    compiled.predict(x, verbose=0)
    assert capsys.readouterr().out == ""


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_redraws_in_place_on_a_terminal():
    out = FakeTTY()
    bar = Progbar(4, verbose=1, interval=0.0, stream=out)
    assert bar.due(1)
    for step in range(1, 5):
        bar.update(step, {"loss": 2.0 / step})
    bar.finish({"loss": 0.5, "accuracy": 0.75})
    text = out.getvalue()
    assert text.count("\r") == 5 and text.endswith("\n")
    assert "1/4 [======>......" in text and "ETA:" in text and "loss: 2.0000" in text
    assert text.split("\r")[-1].startswith("4/4 [==============================] - ")
    assert "loss: 0.5000 - accuracy: 0.7500" in text


def test_batch_logs_only_read_when_shown(compiled, rng, monkeypatch):
    """Without a terminal or batch callbacks, fit reads the running values once per epoch."""
    reads = []
    from gpucnn.models import tracker

    real = tracker.Tracker.values
    monkeypatch.setattr(tracker.Tracker, "values", lambda self: reads.append(1) or real(self))
    x, y = blobs(rng, 40)
    compiled.fit(x, y, batch_size=4, epochs=2, verbose=1)
    assert len(reads) == 2


# -- cuda backend in Numba's simulator ----------------------------------------------------------------------
@pytest.mark.gpu_check
def test_cuda_backend_matches_numpy_step_for_step(small_launches, rng):
    x, y = blobs(rng, 6, shape=(6, 6, 1))
    xv, yv = blobs(rng, 3, shape=(6, 6, 1))
    runs = {}
    for name in ("numpy", "cuda"):
        gpucnn.set_backend(name)
        gpucnn.manual_seed(7)
        model = models.Sequential([
            layers.Conv2D(2, 3, activation="relu", padding="same", input_shape=(6, 6, 1)),
            layers.AveragePooling2D(), layers.Flatten(), layers.Dropout(0.25),
            layers.Dense(3, activation="softmax")])
        model.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
        steps = []
        record = callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: steps.append((logs["loss"], model.get_weights())))
        h = model.fit(x, y, batch_size=2, epochs=1, validation_data=(xv, yv), callbacks=[record],
                      verbose=0)
        runs[name] = (steps, h.history, model.predict(xv, verbose=0))
    gpucnn.set_backend("numpy")
    (np_steps, np_hist, np_pred), (cu_steps, cu_hist, cu_pred) = runs["numpy"], runs["cuda"]
    assert len(np_steps) == len(cu_steps) == 3
    for i, ((la, wa), (lb, wb)) in enumerate(zip(np_steps, cu_steps), 1):
        assert lb == pytest.approx(la, rel=1e-5), f"loss after step {i}"
        for p, q in zip(wa, wb):
            np.testing.assert_allclose(q, p, rtol=1e-4, atol=1e-6, err_msg=f"weights after step {i}")
    for k in np_hist:
        assert cu_hist[k][0] == pytest.approx(np_hist[k][0], rel=1e-5), k
    np.testing.assert_allclose(cu_pred, np_pred, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("classes,activation", [(1, "sigmoid"), (3, "softmax")])
def test_accuracy_with_a_loss_that_does_not_say_which(classes, activation, rng):
    """'accuracy' with mse: binary for one output, categorical for one-hot targets (from shapes)."""
    model = small_cnn(classes, activation)
    model.compile("sgd", "mse", ["accuracy"])
    x = f32(rng, 10, 8, 8, 1)
    lab = rng.integers(0, max(classes, 2), 10)
    y = lab[:, None].astype(np.float32) if classes == 1 else np.eye(3, dtype=np.float32)[lab]
    p = model.predict(x, verbose=0)
    want = np.mean((p > 0.5) == (y > 0.5)) if classes == 1 else np.mean(p.argmax(1) == lab)
    assert model.evaluate(x, y, verbose=0)[1] == pytest.approx(want)


def test_weights_from_another_backend_are_refused(compiled, rng, monkeypatch):
    """A model built before set_backend(...) switched the array module is refused with the fix."""
    import types

    from gpucnn import backend

    class OtherArray:
        pass

    fake = types.SimpleNamespace(ndarray=OtherArray, __name__="cupy")
    monkeypatch.setattr(backend, "xp", lambda: fake)
    monkeypatch.setattr(backend, "get_backend", lambda: "cuda")
    with pytest.raises(RuntimeError, match=r"fit: the weights of model 'small' are numpy arrays, but the "
                                           r"active backend 'cuda' works on cupy arrays.*set_weights"):
        compiled.fit(f32(rng, 4, 8, 8, 1), np.zeros(4, np.int64), verbose=0)
