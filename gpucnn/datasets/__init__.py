"""Data sets as NumPy arrays, channels-last ``(N, H, W, C)`` float32 images and int64 labels.

- ``mnist()``: the IDX files of MNIST (gzip or uncompressed), downloaded and SHA-256-checked when
  missing, optionally padded to the guide's 32 x 32.
- ``digits()``: scikit-learn's 8 x 8 handwritten digits upscaled to 32 x 32; installs with
  scikit-learn, so it needs no download (the default data of the examples).
- ``cifar10()``: the binary version of CIFAR-10 (never unpickled).
- ``split()``: a seeded hold-out split.

Files are looked for in the ``path`` argument, else ``$GPUCNN_DATA/<name>``, else
``~/.gpucnn/datasets/<name>``, else the user cache ``~/.cache/gpucnn/datasets/<name>`` (under
``$XDG_CACHE_HOME`` when set; ``<name>`` is ``mnist`` or ``cifar10``). ``python -m gpucnn.datasets
fetch mnist`` downloads MNIST into that cache (or ``--dir``) ahead of time. Downloads go to a temporary
file in that folder and are renamed only once their checksum is right. A missing file raises
DataNotFoundError (a FileNotFoundError) saying which files to put where; a truncated, corrupt or
mislabelled file raises DataFileError (a ValueError) naming it.

>>> from gpucnn import datasets
>>> x, y = datasets.digits()                                  # doctest: +SKIP
>>> (x_train, y_train), (x_val, y_val) = datasets.split(x, y, 0.2, seed=0)   # doctest: +SKIP
"""
from ._cifar import CIFAR10_CLASSES, cifar10, read_cifar_batch
from ._digits import digits
from ._files import ChecksumError, DataFileError, DataNotFoundError
from ._idx import read_idx
from ._mnist import mnist
from ._split import split

__all__ = [
    "mnist", "digits", "cifar10", "split", "read_idx", "read_cifar_batch", "CIFAR10_CLASSES",
    "DataFileError", "DataNotFoundError", "ChecksumError",
]
