"""The IDX format of the MNIST files (Y. LeCun), read and validated.

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32
dimensions, then the values in C order. MNIST uses type 0x08 (unsigned byte): images are magic
2051 (3 dimensions: N, rows, cols), labels 2049 (1 dimension: N).
"""
from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from ._files import DataFileError, read_bytes

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_KIND = {IMAGES_MAGIC: "an IDX image file", LABELS_MAGIC: "an IDX label file"}
_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, source, magic: int | None = None) -> np.ndarray:
    """The array stored in the IDX bytes ``data``; ``source`` names the file in errors.

    With ``magic`` given, the file must carry exactly that magic number. The length of ``data``
    must match the header exactly: shorter is a truncated file, longer a corrupt one.
    """
    if len(data) < 4:
        raise DataFileError(f"{source}: {len(data)} bytes, too short for an IDX file (truncated?)")
    found = int.from_bytes(data[:4], "big")
    if magic is not None and found != magic:
        what = _KIND.get(found, "not an IDX file of this kind")
        raise DataFileError(
            f"{source}: magic number {found}, expected {magic} ({_KIND[magic]}); "
            f"found {what}: is this the right file?")
    if data[0] or data[1] or data[2] not in _TYPES or data[3] == 0:
        raise DataFileError(f"{source}: magic number {found} is not an IDX header")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{source}: {len(data)} bytes, shorter than its {header}-byte header "
                            f"(truncated)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_TYPES[data[2]])
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "corrupt: extra bytes after the data"
        raise DataFileError(
            f"{source}: header says {' x '.join(map(str, dims))} values = {expected:,} bytes, "
            f"file holds {len(data):,} ({state})")
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)


def read_idx(path, magic: int | None = None) -> np.ndarray:
    """Read and validate the IDX file ``path`` (gzip or uncompressed); see parse_idx."""
    path = Path(path)
    return parse_idx(read_bytes(path), path, magic)
