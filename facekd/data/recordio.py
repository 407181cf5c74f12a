"""InsightFace training sets in MXNet RecordIO (``train.rec`` + ``train.idx``), without mxnet.

The byte level (records, ``IRHeader``, the ``.idx`` index) is ``facekd.data.recordio_format``.

* InsightFace layout (``face2rec2.py``; arcface_torch ``MXFaceDataset``): when record 0 has
  ``flag > 0`` it is a header whose label ``[a, b]`` says images are keys ``1..a-1`` and
  identity records (label = ``[start, end)`` of that identity's image keys) are keys
  ``a..b-1``; otherwise every key of ``.idx`` is an image, in ``.idx`` order. An image's
  identity is ``label`` (or ``label[0]`` when it is an array). ``property`` holds
  ``num_classes,H,W``.
"""

from __future__ import annotations

import hashlib
import operator
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

from facekd.data.folder import Transform, make_item
from facekd.data.recordio_format import (  # noqa: F401 - the byte level, re-exported
    _IR,
    _LENGTH_MASK,
    _MAGIC_BYTES,
    MAGIC,
    IRHeader,
    RecordIOError,
    encode_record,
    pack_record,
    read_index,
    unpack_record,
)
from facekd.data.transforms import read_rgb


class RecordIOReader:
    """Random access to the records of a ``.rec`` through its ``.idx``.

    Safe in DataLoader workers: only paths are stored and each process opens its own file on
    first access (a handle inherited across ``fork`` would share one file position), and reads
    use ``os.pread`` where available, which never moves a shared position.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"RecordIO file not found: {self.rec_path}")
        self.index = read_index(self.idx_path)
        self._file = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": -1}  # handles never cross processes

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, -1

    def _pread(self, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():
            self._file, self._pid = open(self.rec_path, "rb"), os.getpid()  # noqa: SIM115
        if hasattr(os, "pread"):
            return os.pread(self._file.fileno(), size, offset)
        self._file.seek(offset)
        return self._file.read(size)

    def offset(self, key: int) -> int:
        try:
            return self.index[key]
        except KeyError:
            raise KeyError(f"key {key} is not in {self.idx_path}") from None

    def _part(self, pos: int, first: bool, limit: int | None = None) -> tuple[int, bytes]:
        """Read one part at ``pos``: (cflag, its bytes, at most ``limit`` of them)."""
        head = self._pread(pos, 8 + (limit or 0))  # header-only reads: a single system call
        if len(head) < 8:
            raise self._truncated(pos, f"{len(head)} of 8 header bytes")
        magic, lrec = struct.unpack_from("<II", head)
        if magic != MAGIC:
            raise RecordIOError(
                f"bad magic 0x{magic:08x} at offset {pos} in {self.rec_path} (expected "
                f"0x{MAGIC:08x}): the file is corrupt or {self.idx_path} does not belong to it"
            )
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        if first != (cflag in (0, 1)):
            raise RecordIOError(f"unexpected part flag {cflag} at offset {pos} in {self.rec_path}")
        want = length if limit is None else min(length, limit)
        data = self._pread(pos + 8, want) if limit is None else head[8 : 8 + want]
        if len(data) < want:
            raise self._truncated(pos, f"{len(data)} of {length} payload bytes")
        return cflag, data

    def _truncated(self, pos: int, what: str) -> RecordIOError:
        return RecordIOError(f"truncated record at offset {pos} in {self.rec_path}: {what}")

    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (multi-part records joined back with the magic)."""
        pos = self.offset(key)
        parts, first = [], True
        while True:
            cflag, data = self._part(pos, first)
            parts.append(data)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)
            pos += 8 + len(data) + (-len(data) % 4)
            first = False

    def read_header(self, key: int) -> IRHeader:
        """The IRHeader of record ``key``, reading only its first bytes (no image decoding)."""
        offset = self.offset(key)
        cflag, data = self._part(offset, True, limit=_IR.size + 8)  # + up to 2 float labels
        if cflag != 0:  # split record (the magic inside the header: rare): read it whole
            data = self.read(key)
        elif len(data) >= _IR.size and len(data) < _IR.size + 4 * _IR.unpack_from(data)[0]:
            _, data = self._part(offset, True, limit=_IR.size + 4 * _IR.unpack_from(data)[0])
        return unpack_record(data)[0]


class RecordIOWriter:
    """Write a ``.rec`` + ``.idx`` pair byte-compatible with ``mx.recordio.MXIndexedRecordIO``.

    Args:
        rec_path: the ``.rec`` to create; ``idx_path`` defaults to it with suffix ``.idx``
            (written on ``close``).
        header: write the InsightFace header record (key 0) and one identity record per label
            after the images (see the module docstring). Identity records index contiguous
            runs, so with ``header=True`` images must be written sorted by label.
        jpeg_quality: JPEG quality for array images given to ``write`` (bytes are kept as is).

    Image records get keys ``0, 1, ...`` (``1, 2, ...`` with a header) and ``id = key``, the
    convention of ``im2rec``/``face2rec2``.
    """

    def __init__(
        self,
        rec_path: str | Path,
        idx_path: str | Path | None = None,
        *,
        header: bool = False,
        jpeg_quality: int = 95,
    ) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        self.header = header
        self.jpeg_quality = jpeg_quality
        self._file = open(self.rec_path, "wb")  # noqa: SIM115  (closed by close())
        self._index: dict[int, int] = {}
        self._runs: list[list[int]] = []  # [label, first key, end key] per identity run
        self._next_key = 0
        if header:  # placeholder of the final size, patched in close() once counts are known
            self.write_record(0, pack_record([0.0, 0.0], b""))
            self._next_key = 1

    def write_record(self, key: int, payload: bytes) -> None:
        """Append a raw payload (IRHeader included) under ``key``."""
        if key in self._index:
            raise ValueError(f"key {key} already written to {self.rec_path}")
        self._index[key] = self._file.tell()
        self._file.write(encode_record(payload))

    def write(self, image: bytes | np.ndarray, label: int) -> int:
        """Append one face (encoded bytes, or an ``(H, W, 3)`` uint8 RGB array); returns its key."""
        if isinstance(image, np.ndarray):
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # cv2 writes BGR files
            params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
            image = cv2.imencode(".jpg", bgr, params)[1].tobytes()
        label = int(label)
        key = self._next_key
        if self.header:
            if self._runs and label < self._runs[-1][0]:
                raise ValueError(
                    f"label {label} after label {self._runs[-1][0]}: with header=True write "
                    "images sorted by label (identity records index contiguous runs)"
                )
            if not self._runs or self._runs[-1][0] != label:
                self._runs.append([label, key, key])
            self._runs[-1][2] = key + 1
        self.write_record(key, pack_record(float(label), bytes(image), id=key))
        self._next_key += 1
        return key

    def close(self) -> None:
        if self._file.closed:
            return
        if self.header:
            first_id = self._next_key
            for key, (_, start, end) in enumerate(self._runs, first_id):
                self.write_record(key, pack_record([start, end], b"", id=key))
            self._file.seek(0)  # same size as the placeholder: 2 float labels
            self._file.write(
                encode_record(pack_record([first_id, first_id + len(self._runs)], b""))
            )
        self._file.close()
        lines = "".join(f"{k}\t{o}\n" for k, o in self._index.items())
        self.idx_path.write_text(lines)

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_property(directory: str | Path, num_classes: int, image_size=(112, 112)) -> Path:
    """Write InsightFace's ``property`` file: ``num_classes,H,W``."""
    path = Path(directory) / "property"
    path.write_text(f"{int(num_classes)},{int(image_size[0])},{int(image_size[1])}\n")
    return path


def read_property(path: str | Path) -> tuple[int, tuple[int, int]]:
    """``(num_classes, (H, W))`` from an InsightFace ``property`` file."""
    text = Path(path).read_text().strip()
    try:
        n, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise RecordIOError(f"{path}: expected 'num_classes,H,W', got {text!r}") from None
    return n, (h, w)


def _label_set(exclude: Iterable[int | str]) -> set[int]:
    """Integer labels from ints or digit strings (a ``.rec`` names identities by number)."""
    if isinstance(exclude, (str, bytes, Path)):
        raise TypeError(
            "exclude takes labels; read a file with facekd.data.folder.load_identity_list"
        )
    out = set()
    for value in exclude:
        text = str(value).strip()
        if isinstance(value, bool) or not text.lstrip("-").isdigit():
            raise ValueError(
                f"recordio identities are integer labels; cannot exclude {value!r} "
                "(data.exclude_identities holds label numbers for data.source=recordio)"
            )
        out.add(int(text))
    return out


class RecordIODataset(Dataset):
    """An InsightFace RecordIO training set (``train.rec``, ``train.idx``, optional ``property``).

    Args:
        path: the folder holding ``train.rec`` or the ``.rec`` file itself; the index is the
            ``.rec`` path with suffix ``.idx`` unless ``idx_path`` is given, and ``property``
            is looked for next to the ``.rec``.
        transform: optional callable on the decoded ``(H, W, 3)`` uint8 RGB face returning an
            image or ``{"image", "teacher_image"}`` (``facekd.data.folder.Transform``).

    Item ``i`` is the ``i``-th image key in InsightFace's order (header range, else ``.idx``
    order), so indices agree with arcface_torch's ``MXFaceDataset``. ``labels`` reads only the
    IRHeader of each record (one small read per image, cached): no image is decoded.
    Labels must be integers in ``[0, num_classes)`` when ``property`` gives ``num_classes``.

    ``exclude`` (integer labels, as ints or digit strings) drops the images of held-out
    identities: their keys leave ``keys``, so items are re-indexed over the kept images and
    excluded pixels are never read. Labels are the records' own and are not renumbered (they
    are what the ``.rec`` says), and ``num_classes`` stays the full count: an excluded label
    is a classifier row with no images. ``excluded_identities`` lists the labels actually
    present and dropped; labels absent from the file are ignored.
    """

    def __init__(
        self,
        path: str | Path,
        transform: Transform | None = None,
        *,
        idx_path: str | Path | None = None,
        exclude: Iterable[int | str] | None = None,
    ) -> None:
        path = Path(path)
        rec_path = path / "train.rec" if path.is_dir() else path
        self.reader = RecordIOReader(rec_path, idx_path)
        self.transform = transform
        self.header_range: tuple[int, int] | None = None
        keys = list(self.reader.index)
        if 0 in self.reader.index:
            head = self.reader.read_header(0)
            if head.flag > 0:  # InsightFace header record: images are keys 1..a-1
                a, b = int(head.label[0]), int(head.label[1])
                self.header_range = (a, b)
                keys = list(range(1, a))
                if absent := set(keys) - self.reader.index.keys():
                    raise RecordIOError(
                        f"header record of {rec_path} announces image keys 1..{a - 1}; "
                        f"{len(absent)} of them are not in {self.reader.idx_path}"
                    )
        self.keys = np.asarray(keys, dtype=np.int64)
        prop = rec_path.parent / "property"
        self.declared_classes, self.image_size = (
            read_property(prop) if prop.is_file() else (None, None)
        )
        self._labels: np.ndarray | None = None
        self._full_classes: int | None = None  # num_classes before an exclusion (no property)
        self.excluded_identities: list[int] = []
        if exclude is not None:
            self._exclude(_label_set(exclude))

    def _exclude(self, wanted: set[int]) -> None:
        """Drop the keys whose label is in ``wanted`` (reads every record header once)."""
        if not wanted:
            return
        labels = self.labels
        drop = np.isin(labels, np.fromiter(wanted, np.int64, len(wanted)))
        if drop.all():
            raise ValueError(
                f"every image of {self.reader.rec_path} belongs to an excluded identity "
                "(exclude / data.exclude_identities): nothing is left to train on"
            )
        self._full_classes = int(labels.max()) + 1 if len(labels) else 0
        self.excluded_identities = sorted(set(labels[drop].tolist()))
        self.keys, self._labels = self.keys[~drop], labels[~drop]

    def _label(self, header: IRHeader, key: int) -> int:
        value = float(header.label if header.flag == 0 else header.label[0])
        n = self.declared_classes
        if not value.is_integer() or value < 0 or (n is not None and value >= n):
            where = f"record key {key} (offset {self.reader.offset(key)}) of {self.reader.rec_path}"
            allowed = f"[0, {n}) from property" if n is not None else "an integer >= 0"
            raise RecordIOError(f"label {value} of {where} is out of range: expected {allowed}")
        return int(value)

    @property
    def labels(self) -> np.ndarray:
        """``(N,)`` int64 identity labels in item order, from the record headers only."""
        if self._labels is None:
            read = self.reader.read_header
            self._labels = np.array([self._label(read(k), k) for k in self.keys.tolist()])
            self._labels = self._labels.astype(np.int64).reshape(-1)
        return self._labels

    @property
    def num_classes(self) -> int:
        """From ``property`` if present, else the header's identity records, else the labels."""
        if self.declared_classes is not None:
            return self.declared_classes
        if self.header_range is not None and self.header_range[1] > self.header_range[0]:
            return self.header_range[1] - self.header_range[0]
        if self._full_classes is not None:
            return self._full_classes
        return int(self.labels.max()) + 1 if len(self) else 0

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict:
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        index %= len(self)  # the item's index is its position (the teacher-cache key)
        key = int(self.keys[index])
        header, data = unpack_record(self.reader.read(key))
        try:
            image = read_rgb(data, strict=True)
        except ValueError as e:
            raise RecordIOError(
                f"record key {key} (offset {self.reader.offset(key)}) of "
                f"{self.reader.rec_path}: {e}"
            ) from e
        return make_item(image, self._label(header, key), index, self.transform)

    def manifest(self) -> dict:
        """What the teacher cache keys this data set on (``facekd.data.manifest``): the ``.rec``
        path (resolved), its size and mtime, a hash of the ``.idx`` and one of every record
        header (label, id) in item order (the kept ones: excluded labels are listed too, when
        there are some); no image is decoded."""
        st = self.reader.rec_path.stat()
        headers = hashlib.sha256()
        for key in self.keys.tolist():
            h = self.reader.read_header(key)
            headers.update(f"{key}:{self.reader.offset(key)}:{h.flag}:{h.id}:{h.id2}:".encode())
            headers.update(np.asarray(h.label, dtype=np.float64).tobytes())
        out = {
            "kind": "recordio",
            "path": str(self.reader.rec_path.resolve()),
            "rec_size": st.st_size,
            "rec_mtime_ns": st.st_mtime_ns,
            "idx_sha256": hashlib.sha256(self.reader.idx_path.read_bytes()).hexdigest(),
            "headers_sha256": headers.hexdigest(),
            "count": len(self),
        }
        if self.excluded_identities:
            out["excluded_labels"] = list(self.excluded_identities)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.reader.rec_path)!r}, images={len(self)})"
