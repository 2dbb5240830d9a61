"""Pictures of training and of what a network learned, saved as PNG files.

Each function (``curves``, ``filters``, ``feature_maps``, ``confusion_matrix``,
``reconstructions``, ``weights_image``) draws one figure from NumPy arrays (or a ``History``),
writes it to ``path`` and returns the path. matplotlib is imported on first use and drives its
Agg canvas directly (no ``pyplot``, no global backend switch, no window), so this works on
servers and inside tests.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["curves", "filters", "feature_maps", "confusion_matrix", "confusion_counts",
           "reconstructions", "weights_image"]


def _figure(width, height):
    """A matplotlib Figure on an Agg canvas (imported lazily)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("gpucnn.plots needs matplotlib: pip install matplotlib "
                          "(or pip install 'gpucnn[examples]')") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    """Lay ``fig`` out and write it as a PNG through ``gpucnn.io.write_atomic``: a reader never
    sees half a picture, a symlink's target is replaced, a missing folder, a directory, FIFO,
    device or read-only file is refused."""
    from gpucnn.io import write_atomic

    fig.tight_layout()
    path = Path(path)
    write_atomic(path, lambda f: fig.savefig(f, format="png"), op="plots")
    return path


def _array(x, op, name, ndim):
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    x = np.asarray(x)
    if x.ndim != ndim or x.dtype.kind not in "biuf":
        raise ValueError(f"{op}: {name} must be a numeric array of rank {ndim}, got "
                         f"{x.dtype} shape {x.shape}")
    return x


def _grid(n, max_cols):
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _tile(ax, img, cmap="gray", vmin=None, vmax=None, title=None):
    """``img`` drawn on ``ax`` without ticks; returns the image (for a colour bar)."""
    im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=8)
    return im


def curves(history, path, title=None):
    """Loss and metric curves per epoch.

    ``history`` is a ``History`` (its ``.history`` dict) or a dict ``{"loss": [...],
    "val_loss": [...], "accuracy": [...], ...}``. One panel per quantity: ``loss`` and each metric,
    the validation curve (``val_`` prefix) drawn beside the training one.
    """
    h = getattr(history, "history", history)
    if not isinstance(h, dict) or not h:
        raise ValueError(f"curves: expected a History or a non-empty dict of per-epoch lists, "
                         f"got {type(history).__name__}")
    names = [k for k in h if not k.startswith("val_")]
    names += [k[4:] for k in h if k.startswith("val_") and k[4:] not in names]
    names.sort(key=lambda k: (k != "loss", k))
    fig = _figure(4.2 * len(names), 3.4)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        for key, label, style in ((name, "training", "o-"), ("val_" + name, "validation", "s--")):
            if key in h and len(h[key]):
                values = np.asarray(h[key], dtype=float)
                ax.plot(np.arange(1, len(values) + 1), values, style, label=label, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def filters(kernel, path, title="learned filters", max_filters=64):
    """The filters of a conv layer, kernel layout ``(KH, KW, C_in, C_out)``.

    With 1 input channel each filter is one grey tile; with 3 (RGB) each filter is one colour
    tile, scaled to [0, 1] over the whole layer; otherwise each column is one filter and each
    row one input channel (at most 8), the guide's Figure 8 layout. Grey tiles share one colour
    scale centred on zero (dark negative, light positive), so tiles compare.
    """
    k = _array(kernel, "filters", "kernel", 4).astype(np.float64)
    kh, kw, cin, cout = k.shape
    n = min(cout, max_filters)
    m = float(np.abs(k).max()) or 1.0
    if cin in (1, 3):
        lo, hi = k.min(), k.max()
        rgb = (k - lo) / (hi - lo) if hi > lo else np.full_like(k, 0.5)
        grey = {"vmin": -m, "vmax": m} if cin == 1 else {}
        rows, cols = _grid(n, 8)
        fig = _figure(1.2 * cols, 1.3 * rows + 0.5)
        for j in range(n):
            _tile(fig.add_subplot(rows, cols, j + 1), rgb[..., j] if cin == 3 else k[:, :, 0, j],
                  title=str(j), **grey)
    else:
        rows, cols = min(cin, 8), min(n, 16)
        fig = _figure(0.8 * cols + 0.6, 0.85 * rows + 0.6)
        for i in range(rows):
            for j in range(cols):
                _tile(fig.add_subplot(rows, cols, i * cols + j + 1), k[:, :, i, j],
                      vmin=-m, vmax=m, title=f"f{j}" if i == 0 else None)
    fig.suptitle(f"{title}  ({kh}x{kw}, {cin} in, {cout} out"
                 f"{', first %d shown' % n if n < cout else ''})", fontsize=10)
    return _save(fig, path)


def feature_maps(fmap, path, title="feature maps", image=None, max_maps=32):
    """The ``(H, W, C)`` maps of one image after a layer, one grey tile per channel.

    ``image`` (``(H, W)`` or ``(H, W, C)``), when given, is drawn first for reference. Each tile
    has its own scale (a feature map's pattern, not its level, is what shows). 1 x 1 maps, such
    as LeNet-5's C5, are drawn together as one strip of activations.
    """
    f = _array(fmap, "feature_maps", "fmap", 3).astype(np.float64)
    h, w, c = f.shape
    extra = 0 if image is None else 1
    if h == 1 and w == 1:
        cols = min(c, 24)
        strip = np.zeros(math.ceil(c / cols) * cols)
        strip[:c] = f[0, 0]
        fig = _figure(8, 2.6 if image is None else 3.4)
        if image is not None:
            _tile(fig.add_subplot(1, 4, 1), _image(image), title="input")
            ax = fig.add_subplot(1, 4, (2, 4))
        else:
            ax = fig.add_subplot(1, 1, 1)
        m = float(np.abs(strip).max()) or 1.0
        im = _tile(ax, strip.reshape(-1, cols), cmap="coolwarm", vmin=-m, vmax=m,
                   title=f"{c} activations of size 1x1 (rows of {cols})")
        fig.colorbar(im, ax=ax, fraction=0.03)
    else:
        n = min(c, max_maps)
        rows, cols = _grid(n + extra, 8)
        fig = _figure(1.3 * cols, 1.4 * rows + 0.5)
        if image is not None:
            _tile(fig.add_subplot(rows, cols, 1), _image(image), title="input")
        for j in range(n):
            _tile(fig.add_subplot(rows, cols, j + 1 + extra), f[:, :, j], cmap="viridis",
                  title=str(j))
    shown = f", first {max_maps} shown" if c > max_maps and not (h == 1 and w == 1) else ""
    fig.suptitle(f"{title}  ({h}x{w}x{c}{shown})", fontsize=10)
    return _save(fig, path)


def _image(img):
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3 and a.shape[-1] != 3:            # one channel (or not RGB): the first
        a = a[..., 0]
    if a.ndim == 3:
        lo, hi = a.min(), a.max()
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a


def confusion_counts(y_true, y_pred, classes):
    """``(classes, classes)`` int64 counts: row = true class, column = predicted class."""
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"confusion_counts: y_true and y_pred have {t.size} and {p.size} labels")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= classes):
            raise ValueError(f"confusion_counts: {name} must hold ints in [0, {classes}), got "
                             f"{a.dtype} values in [{a.min()}, {a.max()}]")
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (t, p), 1)
    return m


def confusion_matrix(y_true, y_pred, path, class_names=None, title="confusion matrix"):
    """Counts of true (rows) against predicted (columns) classes, with the accuracy in the title."""
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    k = len(class_names) if class_names is not None else int(max(t.max(), p.max())) + 1
    m = confusion_counts(t, p, k)
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    size = 2.5 + 0.45 * k
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right"
                       if max(map(len, names)) > 2 else "center", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = m.max() or 1
    for i in range(k):
        for j in range(k):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > top / 2 else "black")
    acc = np.trace(m) / max(m.sum(), 1)
    ax.set_title(f"{title}: accuracy {100 * acc:.2f}% of {m.sum():,}", fontsize=10)
    return _save(fig, path)


def reconstructions(rows, path, title="denoising autoencoder", max_images=10):
    """Rows of images, e.g. ``{"input": x, "noisy input": x_noisy, "reconstruction": x_hat}``.

    Each value is ``(N, H, W)`` or ``(N, H, W, C)``; column ``j`` shows image ``j`` of every
    row, all on the same [0, 1] grey scale.
    """
    if not isinstance(rows, dict) or not rows:
        raise ValueError("reconstructions: rows must be a non-empty dict {label: images}")
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}
    n = min(min(len(a) for a in arrays.values()), max_images)
    fig = _figure(1.1 * n + 1.4, 1.2 * len(arrays) + 0.4)
    for i, (label, a) in enumerate(arrays.items()):
        for j in range(n):
            ax = fig.add_subplot(len(arrays), n, i * n + j + 1)
            img = a[j]
            if img.ndim == 3 and img.shape[-1] == 1:
                img = img[..., 0]
            _tile(ax, np.clip(img, 0, 1), vmin=0, vmax=1)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def weights_image(w, shape, path, title="weights"):
    """The weights of one neuron (``prod(shape)`` values) reshaped to an image, zero centred."""
    a = np.asarray(w, dtype=np.float64).reshape(-1)
    if a.size != math.prod(shape):
        raise ValueError(f"weights_image: {a.size} weights do not fill an image of shape {shape}")
    m = float(np.abs(a).max()) or 1.0
    fig = _figure(3.6, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    im = _tile(ax, a.reshape(shape), cmap="coolwarm", vmin=-m, vmax=m)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
