"""MXNet RecordIO, the byte level: records, their ``IRHeader`` and the ``.idx`` index.

File format (dmlc-core ``recordio.h``, written by ``mx.recordio.MXIndexedRecordIO``):

* A record is ``uint32 magic 0xced7230a``, ``uint32 lrecord``, the payload, zero padding to a
  multiple of 4 bytes (little endian). ``lrecord >> 29`` is the part flag ``cflag`` and
  ``lrecord & (2**29 - 1)`` the part length. A payload containing the magic at a 4-byte aligned
  position is split there into parts (cflag 1 = first, 2 = middle, 3 = last; 0 = whole record)
  and the magic is dropped; the reader puts it back between parts.
* The payload starts with ``IRHeader`` ``<IfQQ`` = (flag, label, id, id2); when ``flag > 0``
  the label is the ``flag`` float32 values that follow (``mx.recordio.pack``), then comes the
  encoded image.
* ``.idx`` is text, one ``key\\toffset`` line per record (offset of its first part).

``facekd.data.recordio`` reads and writes InsightFace training sets on top of this.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_IR = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes


class RecordIOError(ValueError):
    """A ``.rec``/``.idx`` pair that breaks the format; the message names the file and offset."""


class IRHeader(NamedTuple):
    flag: int
    label: float | np.ndarray  # float when flag == 0, else (flag,) float32
    id: int
    id2: int


def pack_record(label: float | np.ndarray | list, data: bytes, id: int = 0, id2: int = 0) -> bytes:
    """IRHeader + ``data``, exactly as ``mx.recordio.pack`` (a sequence label sets ``flag``)."""
    if np.ndim(label) == 0:
        return _IR.pack(0, float(label), id, id2) + data
    arr = np.asarray(label, dtype="<f4").ravel()
    return _IR.pack(arr.size, 0.0, id, id2) + arr.tobytes() + data


def unpack_record(payload: bytes) -> tuple[IRHeader, bytes]:
    """Inverse of ``pack_record`` (``mx.recordio.unpack``): header and the remaining bytes."""
    flag = _IR.unpack_from(payload)[0] if len(payload) >= _IR.size else 0
    if len(payload) < _IR.size + 4 * flag:
        raise RecordIOError(f"record payload of {len(payload)} bytes is shorter than its IRHeader")
    flag, label, id_, id2 = _IR.unpack_from(payload)
    body = payload[_IR.size :]
    if flag > 0:
        label = np.frombuffer(body, dtype="<f4", count=flag).copy()
        body = body[4 * flag :]
    return IRHeader(flag, label, id_, id2), body


def encode_record(payload: bytes) -> bytes:
    """The on-disk bytes of one record (dmlc ``RecordIOWriter::WriteRecord``)."""
    if len(payload) > _LENGTH_MASK:
        raise RecordIOError(f"record of {len(payload)} bytes exceeds the 2**29 - 1 limit")
    parts, start = [], 0
    for i in range(0, len(payload) - 3, 4):
        if payload[i : i + 4] == _MAGIC_BYTES:  # split here: the magic would fake a record start
            parts.append((1 if start == 0 else 2, payload[start:i]))
            start = i + 4
    parts.append((3 if start else 0, payload[start:]))
    out = bytearray()
    for cflag, chunk in parts:
        out += struct.pack("<II", MAGIC, (cflag << 29) | len(chunk)) + chunk
        out += b"\0" * (-len(chunk) % 4)
    return bytes(out)


def read_index(idx_path: str | Path) -> dict[int, int]:
    """``{key: offset}`` from a ``.idx`` file, in file order."""
    idx_path = Path(idx_path)
    if not idx_path.is_file():
        raise FileNotFoundError(
            f"RecordIO index not found: {idx_path} (a .rec needs its .idx of 'key\\toffset' "
            "lines for random access; InsightFace sets ship train.rec with train.idx)"
        )
    index: dict[int, int] = {}
    for lineno, line in enumerate(idx_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not all(f.isdigit() for f in fields):
            raise RecordIOError(f"{idx_path}:{lineno}: expected 'key<TAB>offset', got {line!r}")
        key, offset = int(fields[0]), int(fields[1])
        if key in index:
            raise RecordIOError(f"{idx_path}:{lineno}: key {key} appears twice")
        index[key] = offset
    return index
