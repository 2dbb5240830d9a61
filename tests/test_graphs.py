"""The CUDA-graph runner's bookkeeping on the CPU: in Numba's simulator a "graph" is the step
recorded as a function and replayed by calling it (gpucnn.parallel.graphed), so everything but
the CUDA graph itself runs here: one capture per batch shape after an eager warm-up, batches
copied into the captured buffers, the partial last batch with its own graph, a new capture when
the weights are replaced or a layer is frozen, the first replay checked against an eager step,
dropout left eager, and the environment switch."""
import warnings

import numpy as np
import pytest

import gpucnn
from gpucnn import layers, models, optimizers
from gpucnn.kernels import load_set
from gpucnn.parallel import graphed

C = load_set("cuda")


def tiny(dropout=0.0):
    gpucnn.manual_seed(5)
    model = models.Sequential([
        layers.Conv2D(2, 3, activation="relu", padding="same", input_shape=(5, 5, 1)),
        layers.MaxPooling2D(), layers.Flatten()]
        + ([layers.Dropout(dropout)] if dropout else [])
        + [layers.Dense(3, activation="softmax")])
    model.compile(optimizers.SGD(0.1, momentum=0.5), "sparse_categorical_crossentropy",
                  ["accuracy"])
    return model


def data(rng, n=7):
    return rng.random((n, 5, 5, 1)).astype(np.float32), rng.integers(0, 3, n)


def fit(model, x, y, **kw):
    """``model.fit`` in order, silently: its history, and the ``Graphed`` kept with the model
    (None where the steps ran eagerly)."""
    return model.fit(x, y, verbose=0, shuffle=False, **kw), graphed.kept_runner(model)


def stepped(rng, model, steps=3):
    """A ``Graphed`` of ``model`` after ``steps`` steps of one batch of 4 (the first eager, the
    second captured, the others replayed), and that batch."""
    runner = graphed.Graphed(model, False, None, 0)
    x, y = data(rng, 4)
    for _ in range(steps):
        runner.step(x, y)
    return runner, x, y


def test_graphed_training_equals_eager_training(cuda_backend, rng, monkeypatch):
    x, y = data(rng)
    graphed_model = tiny()
    h1, r = fit(graphed_model, x, y, batch_size=3, epochs=3)
    assert isinstance(r, graphed.Graphed) and r.off is None
    # batches of 3, 3 and 1: two shapes, each eager once, then captured once and replayed
    assert r.captures == 2 and r.replays == 9 - 2 - 2 + 2
    monkeypatch.setenv("GPUCNN_CUDA_GRAPHS", "0")
    eager_model = tiny()
    h2, eager_runner = fit(eager_model, x, y, batch_size=3, epochs=3)
    assert eager_runner is None
    for a, b in zip(graphed_model.get_weights(), eager_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(h1.history["accuracy"], h2.history["accuracy"])


def test_a_second_fit_replays_what_the_first_captured_until_compile(cuda_backend, rng):
    """``fit`` keeps its runner with the model: the second call captures nothing and replays
    every step; compiling again (new loss and metrics objects) makes a new runner."""
    x, y = data(rng, 6)
    model = tiny()
    _, first = fit(model, x, y, batch_size=3, epochs=2)          # 4 steps of one shape: eager,
    assert first.captures == 1 and first.replays == 3            # then captured and replayed
    _, second = fit(model, x, y, batch_size=3, epochs=1)
    assert second is first
    assert first.captures == 1 and first.replays == 3 + 2
    model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy", ["accuracy"])
    _, new = fit(model, x, y, batch_size=3, epochs=1)            # warms up and captures anew
    assert new is not first and new.captures == 1 and new.replays == 1


def test_new_batches_go_into_the_captured_buffers(cuda_backend, rng):
    model = tiny()
    runner, x, y = stepped(rng, model)
    (g,) = runner.graphs.values()
    x2, y2 = data(rng, 4)
    loss, lv, _ = runner.step(x2, y2)
    np.testing.assert_array_equal(C.to_host(g.inputs[0]), x2)
    np.testing.assert_array_equal(C.to_host(g.inputs[1]), y2)
    eager = graphed.Graphed(model, False, None, 0)
    eager.off = "for the test"
    want, _, _ = eager.step(x2, y2)
    np.testing.assert_allclose(C.to_host(loss), C.to_host(want), rtol=1e-5)
    assert lv is None                      # the loss is read only when it is shown


def test_replaced_weights_or_a_frozen_layer_capture_again(cuda_backend, rng):
    model = tiny()
    runner, x, y = stepped(rng, model)
    assert runner.captures == 1
    model.set_weights([w * 0.5 for w in model.get_weights()])   # in place: the same arrays
    runner.step(x, y)
    model.layers[0].kernel.data = model.layers[0].kernel.data.copy()   # a new array
    for _ in range(2):
        runner.step(x, y)
    assert runner.captures == 2
    model.layers[0].trainable = False
    runner.refresh()
    for _ in range(2):
        runner.step(x, y)
    assert runner.captures == 3 and len(runner.params) == 2


def test_a_first_replay_that_differs_turns_graphs_off(cuda_backend, rng, monkeypatch):
    runner, x, y = stepped(rng, tiny(), 1)
    real = runner.engine.launch

    def corrupt(graph):                    # a replay that writes a wrong gradient
        real(graph)
        for g in runner.graphs.values():
            g.out[3][0][...] += 1.0

    monkeypatch.setattr(runner.engine, "launch", corrupt)
    with pytest.warns(RuntimeWarning, match="CUDA graphs are off.*differs from an eager step"):
        runner.step(x, y)
    assert runner.off is not None and runner.graphs == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner.step(x, y)                  # eager from now on, no second warning


def test_a_step_that_draws_dropout_keys_stays_eager(cuda_backend, rng):
    runner, _, _ = stepped(rng, tiny(dropout=0.5))
    assert runner.captures == 0 and "dropout" in runner.off


def test_graphs_only_on_the_cuda_set(monkeypatch):
    assert graphed.enabled(load_set("cuda")) and not graphed.enabled(load_set("numpy"))
    monkeypatch.setenv("GPUCNN_CUDA_GRAPHS", "0")
    assert not graphed.enabled(load_set("cuda"))


def test_train_on_batch_keeps_its_graphs_between_calls(cuda_backend, rng, monkeypatch):
    """train_on_batch keeps one Graphed with the model: the first call of a batch shape is
    eager, the second captures, the others replay; the weights end as eager calls leave them,
    and a recompiled model gets a new runner."""
    batches = [data(rng, 4) for _ in range(5)] + [data(rng, 2)]
    model = tiny()
    results = [model.train_on_batch(x, y) for x, y in batches]
    key, runner = model._gpucnn_batch_runner
    assert isinstance(runner, graphed.Graphed) and runner.off is None
    assert runner.captures == 1 and runner.replays == 4       # the batch of 2: eager, once
    monkeypatch.setenv("GPUCNN_CUDA_GRAPHS", "0")
    eager = tiny()
    want = [eager.train_on_batch(x, y) for x, y in batches]
    assert "_gpucnn_batch_runner" not in vars(eager)
    np.testing.assert_allclose(results, want, rtol=1e-5)
    for a, b in zip(model.get_weights(), eager.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("GPUCNN_CUDA_GRAPHS", "1")
    model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    model.train_on_batch(*batches[0])
    assert model._gpucnn_batch_runner[1] is not runner


def test_evaluate_and_predict_replay_forward_graphs(cuda_backend, rng, monkeypatch):
    """evaluate and predict capture each batch shape's forward pass once (batches of 3, 3, 1)
    and give what eager passes give; predict's rows are copies, not the graph's buffers; new
    weight arrays capture again."""
    x, y = data(rng, 7)
    model = tiny()
    got = [model.evaluate(x, y, batch_size=3, verbose=0) for _ in range(3)]
    preds = [model.predict(x, batch_size=3, verbose=0) for _ in range(3)]
    fwd = model._gpucnn_forward
    assert fwd.off is None and fwd.captures == 4           # two shapes, evaluate and predict
    monkeypatch.setenv("GPUCNN_CUDA_GRAPHS", "0")
    want = model.evaluate(x, y, batch_size=3, verbose=0)
    want_pred = model.predict(x, batch_size=3, verbose=0)
    for g in got:
        np.testing.assert_allclose(g, want, rtol=1e-5)
    for p in preds:
        np.testing.assert_allclose(p, want_pred, rtol=1e-5, atol=1e-7)
    assert not np.array_equal(want_pred[:3], want_pred[3:6])  # distinct batches, not one buffer
    monkeypatch.setenv("GPUCNN_CUDA_GRAPHS", "1")
    model.layers[-1].kernel.data = model.layers[-1].kernel.data * 2.0   # a new array
    for _ in range(2):
        model.predict(x[:3], batch_size=3, verbose=0)
    assert fwd.captures == 5
    np.testing.assert_allclose(model.predict(x[:3], batch_size=3, verbose=0),
                               model.predict(x[:3], batch_size=3, verbose=0))


def test_a_forward_graph_that_differs_turns_forward_graphs_off(cuda_backend, rng, monkeypatch):
    x, y = data(rng, 4)
    model = tiny()
    want = model.predict(x, verbose=0)                     # eager: the first pass of a shape
    fwd = model._gpucnn_forward
    real = fwd.engine.launch

    def corrupt(graph):
        real(graph)
        for g in fwd.graphs.values():
            g.out[...] += 1.0

    monkeypatch.setattr(fwd.engine, "launch", corrupt)
    with pytest.warns(RuntimeWarning, match="differs from an eager pass.*forward passes"):
        got = model.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-6)       # the eager result is returned
    assert fwd.off is not None and fwd.graphs == {}
