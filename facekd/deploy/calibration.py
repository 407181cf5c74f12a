"""Aligned faces for int8 calibration: a folder, a verification ``.bin`` or a RecordIO ``.rec``.

``load_faces(source, count, seed)`` -> ``(faces, ids)``: up to ``count`` aligned crops as
``(N, S, S, 3)`` uint8 RGB and the position of each in the source's own order (the files sorted
by relative path, the ``.bin``'s image order, the ``.rec``'s image keys), drawn without
replacement by ``numpy.random.default_rng(seed)`` so a sidecar can name exactly which faces
calibrated a model. ``split_faces`` cuts one draw into calibration and held-back faces (never
both). ``FaceBatches`` feeds calibration batches to ``onnxruntime.quantization`` in facekd's
normalisation ``(x / 255 - 0.5) / 0.5`` RGB NCHW (``facekd.data.transforms.to_tensor``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facekd.data.transforms import read_rgb

SOURCES = ("folder", ".bin", ".rec")


class CalibrationError(ValueError):
    """The calibration source cannot be read or holds too few faces."""


def _kind(source: Path) -> str:
    if source.is_dir() and (source / "train.rec").is_file():
        return ".rec"
    if source.is_dir():
        return "folder"
    if source.suffix in (".bin", ".rec") and source.is_file():
        return source.suffix
    if not source.exists():
        raise CalibrationError(f"calibration source {source} does not exist")
    raise CalibrationError(
        f"calibration source {source}: expected a folder of aligned faces, a verification .bin "
        "or a RecordIO .rec (or a folder holding train.rec)"
    )


def _items(source: Path, kind: str) -> tuple[list, Callable]:
    """(references in source order, reference -> encoded image bytes or path)."""
    if kind == "folder":
        from facekd.data.folder import is_image_file

        files = sorted(p for p in source.rglob("*") if is_image_file(p))
        return files, str
    if kind == ".bin":
        from facekd.data.verification import read_bin

        return read_bin(source).images, bytes
    from facekd.data.recordio import RecordIODataset, unpack_record

    data = RecordIODataset(source)
    return list(data.keys), lambda key: unpack_record(data.reader.read(int(key)))[1]


def load_faces(source, count: int, seed: int = 0, size: int = 112, progress: bool = True):
    """``(faces (N, size, size, 3) uint8, ids (N,) int64)`` with ``N = min(count, available)``.

    Crops not ``size`` px square are resized (``INTER_AREA`` down, ``INTER_CUBIC`` up, as
    ``facekd.evaluation.embed.prepare_face``). Raises ``CalibrationError`` for a missing or
    unknown source, an empty one, or an image that cannot be decoded (naming it).
    """
    from facekd.evaluation.embed import prepare_face

    if count < 1:
        raise CalibrationError(f"need at least one calibration face, asked for {count}")
    source = Path(source)
    kind = _kind(source)
    try:
        refs, load = _items(source, kind)
    except (OSError, ValueError) as err:
        raise CalibrationError(f"calibration source {source}: {err}") from None
    if not refs:
        raise CalibrationError(f"calibration source {source} ({kind}) holds no images")
    ids = np.sort(np.random.default_rng(seed).permutation(len(refs))[:count])
    faces = np.empty((len(ids), size, size, 3), np.uint8)
    for row, i in enumerate(tqdm(ids, desc="calibration faces", disable=not progress)):
        try:
            image = read_rgb(load(refs[i]))
        except (OSError, ValueError) as err:
            raise CalibrationError(
                f"{source}: image {i} ({refs[i]!s:.80}) unreadable: {err}"
            ) from None
        try:
            faces[row] = prepare_face(image, size)
        except ValueError as err:  # not square: not an aligned crop
            raise CalibrationError(f"{source}: image {i} ({refs[i]!s:.80}): {err}") from None
    return faces, ids.astype(np.int64)


def split_faces(faces: np.ndarray, ids: np.ndarray, held_back: int):
    """``(calibration faces, their ids, held-back faces, their ids)``: the last ``held_back``
    of a draw are held back (the draw is already random); at least one face calibrates."""
    if held_back < 0 or held_back >= len(faces):
        raise CalibrationError(
            f"{len(faces)} faces cannot hold back {held_back} and still calibrate on one"
        )
    cut = len(faces) - held_back
    return faces[:cut], ids[:cut], faces[cut:], ids[cut:]


def to_input(faces: np.ndarray) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 RGB -> ``(N, 3, S, S)`` float32 ``(x / 255 - 0.5) / 0.5``."""
    x = faces.astype(np.float32).transpose(0, 3, 1, 2)
    return np.ascontiguousarray((x / 255.0 - 0.5) / 0.5)


class FaceBatches:
    """An ``onnxruntime.quantization.CalibrationDataReader``: ``get_next()`` -> ``{input:
    (B, 3, S, S)}`` batches of the faces, then ``None``.

    ``len()`` counts batches and ``set_range(start, end)`` restricts to batches
    ``[start, end)``: with ``extra_options={"CalibStridedMinMax": k}`` ``quantize_static``
    collects ``k`` batches at a time and merges them (ranges, or histograms for percentile /
    entropy), instead of holding every intermediate tensor of every face at once (512 faces
    of the legacy MobileFaceNet ran out of 23 GB that way).
    """

    def __init__(self, faces, input_name: str, batch_size: int = 32, progress: bool = False):
        self.faces, self.input_name, self.batch_size = faces, input_name, batch_size
        self.bar = tqdm(total=len(faces), desc="calibrate", unit="face", disable=not progress)
        self.set_range(0, len(self))

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, end_index

    def get_next(self) -> dict | None:
        if self._next >= self._end:
            return None
        start = self._next * self.batch_size
        self._next += 1
        self.bar.update(len(self.faces[start : start + self.batch_size]))
        return {self.input_name: to_input(self.faces[start : start + self.batch_size])}

    def __len__(self) -> int:
        return -(-len(self.faces) // self.batch_size)
