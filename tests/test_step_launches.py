"""How many kernels a training step launches on the cuda set: the guide's LeNet-5 at batch 32
with SGD takes at most 23, every one of them gpucnn's (the fused backward, the dense layers as
1x1 convolutions with their bias and activation in the kernels, the multi-tensor update), where
the dense layers' matmuls and bias adds were the array module's before. The kernels are
recorded, not run: the launch count depends on shapes alone, so the simulator needs no time to
execute a full-size step, and the outputs are zeros (a finite loss, so the backward runs)."""
import collections
import sys

import numpy as np
import pytest

import gpucnn
from gpucnn import optimizers, zoo
from gpucnn.kernels.cuda_set import _launch


@pytest.fixture
def recorded(monkeypatch):
    names = collections.Counter()

    class NoRun:
        def __getitem__(self, config):
            return lambda *args: None

    def sim_kernel(spec):
        names[spec.name.split("[")[0]] += 1
        return NoRun()

    monkeypatch.setattr(_launch, "_sim_kernel", sim_kernel)
    # an eager step is what is counted (a graph's replay is one launch on a GPU; in the
    # simulator it calls the step again)
    monkeypatch.setenv("GPUCNN_CUDA_GRAPHS", "0")
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("gpucnn.kernels.cuda_set.") and \
                getattr(mod, "empty", None) is _launch.empty:
            monkeypatch.setattr(mod, "empty", lambda shape, dtype: np.zeros(shape, dtype))
    gpucnn.set_backend("cuda")
    try:
        yield names
    finally:
        gpucnn.set_backend("numpy")


# the kernels do not run: a layer that divides by a sum the kernel would have made may warn
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("optimizer,limit", [(optimizers.SGD(0.01), 23),
                                             (optimizers.Adam(1e-3), 23)])
def test_a_lenet5_training_step_launches_at_most_23_kernels(recorded, optimizer, limit, rng):
    model = zoo.lenet5()
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    x = rng.random((32, 32, 32, 1)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    model.train_on_batch(x, y)                   # slots and buffers made on the first step
    recorded.clear()
    before = _launch.launch_count()
    model.train_on_batch(x, y)
    count = _launch.launch_count() - before
    assert count == sum(recorded.values())
    assert count <= limit, f"{count} launches: {dict(recorded)}"
    assert recorded["multi_" + type(optimizer).__name__.lower()] == 1
    assert recorded["gemm_fwd"] == 5             # C1, C3, C5, F6 and the output layer
    for plain in ("act_bwd", "sgd", "adam"):     # fused away
        assert recorded[plain] == 0, dict(recorded)
