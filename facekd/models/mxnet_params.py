"""MXNet's NDArray file (``model-0000.params``) read with plain numpy, no mxnet.

Layout (little endian): ``uint64 LIST_MAGIC``, ``uint64 reserved``, ``uint64 n``; ``n`` arrays;
``uint64 n`` again and the ``n`` names (``arg:`` / ``aux:`` prefixed). An array is its magic
(V1 / V2 / V3; before V1 the first word is the rank), a storage type (V2 / V3, dense only),
the rank and shape, the device context and the type flag (``DTYPES``), then the raw values.
``facekd.models.mxnet_legacy`` turns the arrays into a facekd backbone.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np

LIST_MAGIC = 0x112
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
#: MXNet (mshadow) type flag -> numpy dtype; 12 (bfloat16) has no numpy type
DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8", 7: "?"}


class _Cursor:
    """Sequential little-endian reads that name the file and byte offset on failure."""

    def __init__(self, path: Path) -> None:
        self.path, self.buf, self.pos = path, path.read_bytes(), 0

    def fail(self, why: str, at: int | None = None) -> ValueError:
        return ValueError(
            f"{self.path}: not a valid MXNet NDArray file ({len(self.buf)} bytes): {why} "
            f"at byte offset {self.pos if at is None else at}"
        )

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.buf):
            raise self.fail(f"truncated: {what} needs {n} bytes, {len(self.buf) - self.pos} left")
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def read(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def _read_array(cur: _Cursor, i: int) -> np.ndarray:
    start = cur.pos
    (magic,) = cur.read("I", f"array {i} magic")
    if magic in (V2_MAGIC, V3_MAGIC) and cur.read("i", f"array {i} storage type")[0] != 0:
        raise cur.fail(f"array {i} is sparse (only dense storage is supported)", start)
    versioned = magic in (V1_MAGIC, V2_MAGIC, V3_MAGIC)
    ndim = cur.read("i", f"array {i} ndim")[0] if versioned else magic  # v0: magic is ndim
    if not (-1 if magic == V3_MAGIC else 0) <= ndim <= 32:
        raise cur.fail(f"array {i}: ndim {ndim} (wrong magic 0x{magic:08X}?)", start)
    shape = cur.read(("q" if versioned else "I") * max(ndim, 0), f"array {i} shape")
    if ndim == -1 or (ndim == 0 and magic != V3_MAGIC):  # MXNet's "none" array
        return np.zeros((0,), np.float32)
    flag = cur.read("iii", f"array {i} context and dtype")[2]
    if flag not in DTYPES:
        raise cur.fail(f"array {i}: unsupported dtype flag {flag}", cur.pos - 4)
    dtype = np.dtype(DTYPES[flag])
    data = cur.take(int(np.prod(shape)) * dtype.itemsize, f"array {i} data {shape}")
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_ndarray_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an MXNet NDArray list (``model-0000.params``) -> ``{name: array}`` in file order.

    ``arg:`` / ``aux:`` prefixes are stripped (``aux:fc1_moving_var`` -> ``fc1_moving_var``).
    Raises ``ValueError`` naming the file and the byte offset for a bad magic or truncation.
    """
    cur = _Cursor(Path(path))
    magic, _reserved, n = cur.read("QQQ", "header")
    if magic != LIST_MAGIC:
        raise cur.fail(f"bad magic 0x{magic:X} (expected 0x{LIST_MAGIC:X})", 0)
    if n > len(cur.buf) // 4:  # each array takes at least 4 bytes: random bytes stop here
        raise cur.fail(f"array count {n} cannot fit in the file", 16)
    arrays = [_read_array(cur, i) for i in range(n)]
    if cur.read("Q", "name count")[0] != n:
        raise cur.fail(f"name count differs from the array count {n}", cur.pos - 8)
    out: dict[str, np.ndarray] = {}
    for i in range(n):
        length = cur.read("Q", f"name {i} length")[0]
        name = cur.take(length, f"name {i}").decode("utf-8", "replace")
        key = re.sub(r"^(arg|aux):", "", name)
        if key in out:
            raise cur.fail(f"duplicate array name {key!r}")
        out[key] = arrays[i]
    if cur.pos != len(cur.buf):
        raise cur.fail(f"{len(cur.buf) - cur.pos} unexpected trailing bytes")
    return out
