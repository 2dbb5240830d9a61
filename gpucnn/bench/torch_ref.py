"""The PyTorch side of the benchmark: the same networks and ops in PyTorch's default NCHW layout.

Nothing here is imported unless PyTorch is installed; gpucnn does not depend on it. On the CPU
PyTorch runs eager with ``torch.set_num_threads`` equal to gpucnn's thread count; on a GPU it uses
cuDNN in fp32 with TF32 off (so that both sides do the same arithmetic) unless a row says TF32.
"""
from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass


def available() -> bool:
    return importlib.util.find_spec("torch") is not None


def setup(device: str, threads: int):
    """Import torch, set its threads (CPU) or switch TF32 off (GPU); returns the module."""
    import torch

    if device == "cpu":
        torch.set_num_threads(threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    return torch


@dataclass
class TorchSide:
    """PyTorch and the device it runs on (``cpu`` or ``cuda``)."""

    torch: object
    device: str

    @property
    def sync(self):
        return (lambda: None) if self.device == "cpu" else self.torch.cuda.synchronize


def info(torch) -> str:
    cfg = torch.__config__.parallel_info().splitlines()
    backend = next((line.split(":", 1)[1].strip() for line in cfg
                    if line.startswith("ATen parallel backend")), "?")
    mkldnn = torch.backends.mkldnn.is_available()
    return (f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads "
            f"({backend}), oneDNN {'on' if mkldnn else 'off'}")


# ------------------------------------------------------------------------------------- models
def lenet5(torch, classes=10):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(16, 120, 5), nn.Tanh(), nn.Flatten(),
        nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, classes))


def alexnet(torch, side=227, classes=1000, width=1.0, dense_units=None, dropout=0.5,
            channels=3, stem="imagenet"):
    """``zoo.alexnet((side, side, channels), classes, dropout, width, dense_units, stem)``: the
    guide's AlexNet (62,378,344 parameters at the defaults) or, with ``stem="small"``, the 3 x 3
    first conv for small inputs."""
    nn = torch.nn

    def n(f):
        return max(1, round(f * width))

    c1, c2, c3, c4, c5 = n(96), n(256), n(384), n(384), n(256)
    dense = max(1, round(4096 * width)) if dense_units is None else dense_units
    conv1 = nn.Conv2d(channels, c1, 11, stride=4) if stem == "imagenet" else \
        nn.Conv2d(channels, c1, 3, padding=1)
    s = (side - 11) // 4 + 1 if stem == "imagenet" else side
    for _ in range(3):
        s = (s - 3) // 2 + 1
    return nn.Sequential(
        conv1, nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Linear(c5 * s * s, dense), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(dense, dense), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(dense, classes))


def autoencoder(torch, channels=1, latent=8, filters=(16, 32)):
    """``zoo.conv_autoencoder``: the same layer sizes (PyTorch pads 'same' symmetrically where
    TensorFlow puts the odd pixel bottom-right; the work is the same)."""
    nn = torch.nn
    f1, f2 = filters
    return nn.Sequential(
        nn.Conv2d(channels, f1, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(f1, f2, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(f2, latent, 3, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(latent, f2, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(f2, f1, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.Conv2d(f1, channels, 3, padding=1), nn.Sigmoid())


def optimizer(torch, params, name):
    if name not in ("sgd", "sgd_momentum", "adam"):
        raise ValueError(f"unknown optimizer {name!r}")
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-3, eps=1e-7)
    return torch.optim.SGD(params, lr=0.01, momentum=0.9 if name == "sgd_momentum" else 0)


class Trainer:
    """A PyTorch training epoch written as its users write it: shuffle, slice, zero_grad,
    forward, loss, backward, step, and the loss (and accuracy) read back each step."""

    def __init__(self, torch, model, x, y, batch, opt, loss, device, accuracy):
        self.torch, self.model, self.batch = torch, model.to(device), batch
        self.x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
        if loss == "mse":
            self.y = torch.from_numpy(y.transpose(0, 3, 1, 2).copy()).to(device)
            self.lossf = torch.nn.MSELoss()
        else:
            self.y = torch.from_numpy(y.astype("int64")).to(device)
            self.lossf = torch.nn.CrossEntropyLoss()
        self.opt = optimizer(torch, self.model.parameters(), opt)
        self.accuracy = accuracy
        self.model.train()

    def epoch(self):
        torch = self.torch
        n = self.x.shape[0]
        perm = torch.randperm(n, device=self.x.device)
        xe, ye = self.x[perm], self.y[perm]
        total, correct = 0.0, 0
        for a in range(0, n, self.batch):
            xb, yb = xe[a:a + self.batch], ye[a:a + self.batch]
            self.opt.zero_grad(set_to_none=True)
            out = self.model(xb)
            loss = self.lossf(out, yb)
            loss.backward()
            self.opt.step()
            total += loss.item() * xb.shape[0]
            if self.accuracy:
                correct += int((out.argmax(1) == yb).sum())
        return total / n, correct

    def predict(self, batch):
        torch = self.torch
        self.model.eval()
        outs = []
        with torch.no_grad():
            for a in range(0, self.x.shape[0], batch):
                outs.append(self.model(self.x[a:a + batch]))
        self.model.train()
        return torch.cat(outs).cpu().numpy()


# ---------------------------------------------------------------------------------------- ops
def conv_ops(torch, device, x, w, b, stride, pad4, act):
    """``(forward, dx, dw)`` closures for an NHWC conv case given as NumPy arrays, run on NCHW
    tensors. ``pad4`` is TensorFlow's (top, bottom, left, right); an asymmetric padding is
    padded explicitly (as PyTorch users do) in the forward closure and given as the larger
    symmetric padding to the gradients (same shapes, within a row of work)."""
    F = torch.nn.functional
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
    wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).to(device)
    bt = None if b is None else torch.from_numpy(b).to(device)
    pt, pb, pl, pr = pad4
    sym = (pt == pb and pl == pr)
    xs = xt if sym else F.pad(xt, (pl, pr, pt, pb))
    psym = (pt, pl) if sym else 0
    dy = torch.randn_like(F.conv2d(xs, wt, bt, stride, psym))
    fn = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}.get(act)

    def forward():
        xin = xt if sym else F.pad(xt, (pl, pr, pt, pb))
        out = F.conv2d(xin, wt, bt, stride, psym)
        return fn(out) if fn is not None else out

    def dx():
        return torch.nn.grad.conv2d_input(xs.shape, wt, dy, stride, psym)

    def dw():
        return torch.nn.grad.conv2d_weight(xs, wt.shape, dy, stride, psym)

    return forward, dx, dw


def conv_transpose_op(torch, device, x, w, stride, out_hw, pad4):
    """The transposed conv of an NHWC ``x`` with a Keras ``(KH, KW, C_out, C_in)`` kernel."""
    F = torch.nn.functional
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
    wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).to(device)   # (C_in, C_out, KH, KW)
    kh, kw = w.shape[:2]
    pt, pl = max(pad4[:2]), max(pad4[2:])    # PyTorch pads symmetrically; output_padding fixes
                                             # the size
    h, wd = x.shape[1:3]
    oph = out_hw[0] - ((h - 1) * stride[0] - 2 * pt + kh)
    opw = out_hw[1] - ((wd - 1) * stride[1] - 2 * pl + kw)

    return lambda: F.conv_transpose2d(xt, wt, None, stride, (pt, pl), (oph, opw))


def _forward_backward(torch, f, leaf, seed_like=False):
    """``(forward, backward)`` closures of ``f()``, a function of the tensor ``leaf``: the
    forward under ``no_grad``, the backward alone (autograd's recorded forward is redone outside
    the timed region) from a random output gradient with ``seed_like``, else none."""
    y = f()
    dy = torch.randn_like(y) if seed_like else None

    def forward():
        with torch.no_grad():
            return f()

    def backward():
        return torch.autograd.grad(y, leaf, dy, retain_graph=True)[0]

    return forward, backward


def pool_ops(torch, device, x, kind, pool, stride):
    F = torch.nn.functional
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device).requires_grad_(True)
    f = F.max_pool2d if kind == "max" else F.avg_pool2d
    return _forward_backward(torch, lambda: f(xt, pool, stride), xt, seed_like=True)


def xent_ops(torch, device, z, labels):
    zt = torch.from_numpy(z).to(device).requires_grad_(True)
    lt = torch.from_numpy(labels.astype("int64")).to(device)
    return _forward_backward(torch, lambda: torch.nn.functional.cross_entropy(zt, lt), zt)


# ------------------------------------------------------------------ twins on a GPU (zero copy)
# ``python -m gpucnn.gpucheck`` times gpucnn's cuda kernels beside these: PyTorch reads the very
# same device arrays through DLPack, NHWC memory seen as channels-last NCHW tensors (cuDNN's
# NHWC kernels), and the gradients are aten's backward ops called directly (no autograd graph).

def _view(torch, a):
    return torch.from_dlpack(a)


def _nchw(torch, a):
    """An NHWC device array as an NCHW tensor in channels-last memory (no copy)."""
    return _view(torch, a).permute(0, 3, 1, 2)


def gpu_conv_twins(torch, x, w, b, dy, stride, pad4, act, cout):
    """``{"fwd", "bwd_input", "bwd_weight", "bias"}`` closures over device arrays; {} for an
    asymmetric padding (PyTorch pads symmetrically)."""
    F = torch.nn.functional
    pt, pb, pl, pr = pad4
    if pt != pb or pl != pr:
        return {}
    xt, dyt = _nchw(torch, x), _nchw(torch, dy)
    wt = _view(torch, w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    bt = _view(torch, b)
    fn = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}.get(act, lambda v: v)
    padding = (pt, pl)

    def bwd(mask):
        return lambda: torch.ops.aten.convolution_backward(
            dyt, xt, wt, [cout], stride, padding, (1, 1), False, (0, 0), 1, mask)

    return {"fwd": lambda: fn(F.conv2d(xt, wt, bt, stride, padding)),
            "bwd_input": bwd([True, False, False]),
            "bwd_weight": bwd([False, True, False]),
            "bias": lambda: dyt.sum((0, 2, 3))}


def gpu_pool_twins(torch, kind, x, dy, k, stride):
    F = torch.nn.functional
    xt, dyt = _nchw(torch, x), _nchw(torch, dy)
    if kind == "max":
        _, idx = F.max_pool2d(xt, k, stride, return_indices=True)
        return {"fwd": lambda: F.max_pool2d(xt, k, stride),
                "bwd": lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                    dyt, xt, [k, k], [stride, stride], [0, 0], [1, 1], False, idx)}
    return {"fwd": lambda: F.avg_pool2d(xt, k, stride),
            "bwd": lambda: torch.ops.aten.avg_pool2d_backward(
                dyt, xt, [k, k], [stride, stride], [0, 0], False, True, None)}


def gpu_softmax_twins(torch, z, labels):
    tz, tl = _view(torch, z), _view(torch, labels)
    return {"xent": lambda: torch.nn.functional.cross_entropy(tz, tl, reduction="none"),
            "softmax": lambda: torch.softmax(tz, 1)}


def gpu_relu_twins(torch, x, y):
    tx, ty = _view(torch, x), _view(torch, y)
    return {"fwd": lambda: torch.relu(tx),
            "bwd": lambda: torch.ops.aten.threshold_backward(tx, ty, 0)}


def gpu_tanh_twin(torch, x):
    tx = _view(torch, x)
    return {"tanh": lambda: torch.tanh(tx)}


def gpu_adam_twin(torch, n):
    prm = torch.zeros(n, device="cuda", requires_grad=True)
    prm.grad = torch.randn(n, device="cuda")
    try:
        opt = torch.optim.Adam([prm], lr=1e-4, eps=1e-7, fused=True)
    except (TypeError, RuntimeError):
        opt = torch.optim.Adam([prm], lr=1e-4, eps=1e-7)
    return {"step": opt.step}


def gpu_fit_images_per_second(torch, net, x, y, batch, graphed=False, momentum=0.0, tf32=False,
                              device="cuda"):
    """``net`` trained as ``fit`` trains it: an epoch over ``x, y`` (NCHW images and int64
    labels, in pinned host memory or on the device) in batches of ``batch``, SGD (learning rate
    0.01, ``momentum``), the loss read once at the end; a warm-up epoch first (cuDNN's choices,
    the allocator). Host batches are copied into a static input, device batches are sliced. With
    ``graphed`` the step (forward, backward, update) is captured once as a CUDA graph
    (``torch.cuda.graph``, after warm-up steps on a side stream) and replayed with each batch
    copied into its static input, PyTorch's fastest form of a small step. ``tf32`` sets
    ``allow_tf32`` for cuDNN and matmuls during the call. Returns ``{"images/s", "host ms/step",
    "peak MiB", "reserved MiB"}``: on a GPU the peaks of ``max_memory_allocated`` and
    ``max_memory_reserved`` counted from before ``net`` moved to the device (NaN on the CPU)."""
    F = torch.nn.functional
    cuda = device == "cuda"
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
    saved = [f.allow_tf32 for f in flags]
    for f in flags:
        f.allow_tf32 = tf32
    try:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = (torch.cuda.memory_allocated(), torch.cuda.memory_reserved())
        net = net.to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=momentum)
        steps = x.shape[0] // batch
        sx = torch.empty((batch,) + tuple(x.shape[1:]), device=device).to(
            memory_format=torch.channels_last)
        sy = torch.empty((batch,), dtype=torch.long, device=device)

        def eager(xb, yb):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            opt.step()
            return loss

        run = eager
        if graphed:
            sx.copy_(x[:batch])
            sy.copy_(y[:batch])
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    eager(sx, sy)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                static_loss = F.cross_entropy(net(sx), sy)
                static_loss.backward()
                opt.step()

            def run(xb, yb):
                graph.replay()
                return static_loss

        copy = graphed or x.device.type != device

        def epoch():
            total = None
            for i in range(steps):
                xb, yb = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
                if copy:
                    sx.copy_(xb, non_blocking=True)
                    sy.copy_(yb, non_blocking=True)
                    xb, yb = sx, sy
                loss = run(xb, yb).detach()
                total = loss if total is None else total + loss
            return float(total)          # the one read of the epoch

        epoch()                          # warm-up
        t, c = time.perf_counter(), time.process_time()
        epoch()
        if cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        out = {"images/s": steps * batch / wall, "host ms/step": 1e3 * cpu / steps,
               "peak MiB": math.nan, "reserved MiB": math.nan}
        if cuda:
            out["peak MiB"] = (torch.cuda.max_memory_allocated() - base[0]) / 2**20
            out["reserved MiB"] = (torch.cuda.max_memory_reserved() - base[1]) / 2**20
        return out
    finally:
        for f, v in zip(flags, saved):
            f.allow_tf32 = v


def gpu_lenet5_fit(torch, batch, steps, graphed=False):
    """LeNet-5 through ``gpu_fit_images_per_second``: ``steps`` batches of random images in
    pinned host memory, each copied to the device, as ``fit`` copies host data."""
    x = torch.rand(batch * steps, 1, 32, 32).pin_memory()
    y = torch.randint(0, 10, (batch * steps,)).pin_memory()
    return gpu_fit_images_per_second(torch, lenet5(torch), x, y, batch, graphed)


def gpu_alexnet_fit(torch, x, labels, batch, tf32=False, device="cuda"):
    """The guide's AlexNet through ``gpu_fit_images_per_second`` (SGD with momentum 0.9, eager)
    on the arrays ``x`` (NHWC, read in place as channels-last NCHW) and ``labels``."""
    return gpu_fit_images_per_second(torch, alexnet(torch), _nchw(torch, x),
                                     _view(torch, labels).long(), batch, momentum=0.9, tf32=tf32,
                                     device=device)
