"""Face-verification pair sets and InsightFace verification ``.bin`` files.

``PairSet`` is what every verification reader returns (``.bin`` files here, the published
pair lists in ``facekd.data.pairlists``): image references, pairs as indices into them, the
same/different label and the protocol's fold of each pair.

**The ``.bin`` format** (insightface ``recognition/arcface_torch/eval/verification.py``,
``load_bin``): a pickle of the 2-tuple ``(bins, issame_list)``. ``bins`` holds ``2 N`` encoded
images (JPEG or PNG bytes of aligned 112x112 faces); images ``2k`` and ``2k+1`` form pair
``k``. ``issame_list`` holds ``N`` booleans. The released files (``lfw.bin``,
``agedb_30.bin``, ``cfp_fp.bin``, ...) were written by Python 2, so their byte strings load
with ``encoding='bytes'``; elements may also come as 1-D ``uint8`` arrays and the labels as a
numpy bool array or numpy scalars. insightface decodes to RGB and ``resize_short``-s images
whose width is not 112; ``decode_image`` does the same with OpenCV.

Reading uses a restricted unpickler: only the globals a list/tuple of bytes and numpy bool
arrays need are resolved (``ALLOWED_GLOBALS``); anything else raises ``ValueError`` naming
the refused global *before* it is called, so a malicious ``.bin`` cannot run code.

Writing (``write_bin``) uses pickle **protocol 4**: ``bytes`` become BINBYTES opcodes and the
labels plain ``bool`` objects, so the file references no global at all. insightface's Python 3
loader reads it unchanged, and ``read_bin`` returns the very same bytes. (Protocol 2 would
store every image through the ``_codecs.encode`` global.) Arrays are encoded as JPEG quality
95: the OpenCV ``imwrite`` default, which insightface's old ``align_lfw.py`` -> ``lfw2pack.py``
route wrote with (the released files do not record their quality).
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facekd.data.transforms import read_rgb, to_tensor

JPEG_QUALITY = 95
BIN_PROTOCOL = 4

try:  # numpy >= 2 (numpy.core is a deprecated alias there)
    from numpy._core.multiarray import _reconstruct, scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar
    from numpy.core.numeric import _frombuffer


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it, restricted to latin-1."""
    if not isinstance(obj, str) or encoding.replace("-", "").lower() != "latin1":
        raise ValueError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, "latin-1", errors)


#: (module, name) -> object; everything a verification ``.bin`` may legitimately reference
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # arrays, protocol 5
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): bytes,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "bytes"): bytes,  # Python 2 names (protocol < 3 keeps them)
    ("__builtin__", "bytearray"): bytearray,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ValueError(
                f"refused global {module}.{name}: verification .bin files may only contain "
                "bytes, lists, tuples, bools and numpy bool/uint8 arrays"
            ) from None


def safe_load_pickle(data: bytes):
    """Unpickle ``data`` resolving only ``ALLOWED_GLOBALS`` (Python 2 strings -> bytes)."""
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


@dataclass
class PairSet:
    """A verification protocol: ``N`` pairs over ``M`` images.

    Attributes:
        images: ``M`` image references: file paths (raw photos from a pair list) or encoded
            bytes (aligned crops from a ``.bin``).
        pairs: ``(N, 2)`` int64 indices into ``images``.
        issame: ``(N,)`` bool, True for a matched (same identity) pair.
        folds: ``(N,)`` int64, the protocol's fold of each pair (0-based), ``-1`` where the
            source defines none (``.bin`` files: insightface splits them into 10 contiguous
            blocks in file order instead).
        name: a label for reports (``"lfw"``, ``"cfp_fp"``, ...).
        identities: optional ``M`` identity names, one per image (pair lists know them; a
            ``.bin`` alone does not, its manifest does): they give the all-pairs protocol
            (every mated and non-mated pair of the set's faces, ``facekd.evaluation.all_pairs``).
    """

    images: list
    pairs: np.ndarray
    issame: np.ndarray
    folds: np.ndarray
    name: str = ""
    identities: list | None = None

    def __post_init__(self) -> None:
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        self.issame = np.asarray(self.issame, dtype=bool).reshape(-1)
        self.folds = np.asarray(self.folds, dtype=np.int64).reshape(-1)
        n = len(self.pairs)
        if len(self.issame) != n or len(self.folds) != n:
            raise ValueError(
                f"pair set {self.name!r}: {n} pairs but {len(self.issame)} labels and "
                f"{len(self.folds)} folds"
            )
        if n and (self.pairs.min() < 0 or self.pairs.max() >= len(self.images)):
            raise ValueError(f"pair set {self.name!r}: pair indices outside 0..{len(self.images)}")
        if self.identities is not None:
            self.identities = [str(x) for x in self.identities]
            if len(self.identities) != len(self.images):
                raise ValueError(
                    f"pair set {self.name!r}: {len(self.identities)} identities for "
                    f"{len(self.images)} images"
                )
            same = np.array([self.identities[i] == self.identities[j] for i, j in self.pairs])
            if n and (same != self.issame).any():
                k = int(np.flatnonzero(same != self.issame)[0])
                a, b = (self.identities[i] for i in self.pairs[k])
                raise ValueError(
                    f"pair set {self.name!r}: pair {k} is labelled "
                    f"{'same' if self.issame[k] else 'different'} but its identities are "
                    f"{a!r} and {b!r}"
                )

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def n_folds(self) -> int:
        """Number of protocol folds (0 when the source defines none)."""
        return int(self.folds.max()) + 1 if len(self) and self.folds.min() >= 0 else 0

    def fold_major(self) -> PairSet:
        """Pairs stably sorted by fold, so contiguous equal blocks are the protocol's folds."""
        if self.n_folds == 0:
            return self
        order = np.argsort(self.folds, kind="stable")
        return PairSet(
            self.images,
            self.pairs[order],
            self.issame[order],
            self.folds[order],
            self.name,
            self.identities,
        )

    def used_only(self) -> PairSet:
        """The same protocol over only the images some pair uses (a ``.bin`` holds no others),
        in their original order."""
        used = np.unique(self.pairs)
        if len(used) == len(self.images):
            return self
        new = np.full(len(self.images), -1)
        new[used] = np.arange(len(used))
        ids = [self.identities[i] for i in used] if self.identities is not None else None
        images = [self.images[i] for i in used]
        return PairSet(images, new[self.pairs], self.issame, self.folds, self.name, ids)

    def pair_images(self) -> list:
        """The ``2 N`` image references in ``.bin`` order (pair ``k`` -> items ``2k, 2k+1``)."""
        return [self.images[i] for i in self.pairs.reshape(-1)]


def _as_bytes(item, index: int, path: str) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise ValueError(f"{path}: image {index} is {type(item).__name__}, expected encoded bytes")


def read_bin(path: str | os.PathLike, name: str | None = None) -> PairSet:
    """Load an InsightFace verification ``.bin`` as a ``PairSet`` of encoded bytes.

    ``images`` are the ``2 N`` byte strings in file order, ``pairs = arange(2N).reshape(N, 2)``,
    ``folds`` all ``-1``. Raises ``ValueError`` naming the file for truncated or foreign
    files, refused globals, or inconsistent lengths. Images are not decoded here.
    """
    with open(path, "rb") as f:
        return parse_bin(f.read(), str(path), name)


def parse_bin(data: bytes, path: str, name: str | None = None) -> PairSet:
    """``read_bin`` on bytes already read (``path`` names them in errors and the default name)."""
    try:
        obj = safe_load_pickle(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    except Exception as e:  # truncated / garbage: EOFError, UnpicklingError, ...
        msg = f"{path}: not a readable verification .bin ({type(e).__name__}: {e})"
        raise ValueError(msg) from e
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise ValueError(f"{path}: expected a pickled (bins, issame_list), got {type(obj)}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise ValueError(f"{path}: bins must be a list, got {type(bins).__name__}")
    images = [_as_bytes(b, i, path) for i, b in enumerate(bins)]
    issame = np.asarray(issame)
    if issame.ndim != 1 or not (issame.dtype == bool or np.issubdtype(issame.dtype, np.integer)):
        raise ValueError(f"{path}: issame_list must be a 1-D list of bools, got {issame.dtype}")
    if issame.dtype != bool and not np.isin(issame, (0, 1)).all():
        raise ValueError(f"{path}: issame_list holds values other than 0/1")
    if len(images) != 2 * len(issame):
        raise ValueError(f"{path}: {len(images)} images for {len(issame)} pairs (need 2 per pair)")
    n = len(issame)
    label = name if name is not None else Path(path).stem
    return PairSet(images, np.arange(2 * n).reshape(n, 2), issame, np.full(n, -1), label)


def encode_image(image: np.ndarray, ext: str = ".jpg", quality: int = JPEG_QUALITY) -> bytes:
    """``(H, W, 3)`` uint8 RGB -> JPEG (quality ``quality``) or PNG bytes."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3):
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {getattr(image, 'shape', image)}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image as {ext}")
    return buf.tobytes()


def write_bin(
    path: str | os.PathLike,
    images: Sequence[bytes | np.ndarray],
    issame: Sequence[bool] | np.ndarray,
    quality: int = JPEG_QUALITY,
) -> None:
    """Write an InsightFace verification ``.bin`` (pickle protocol 4, see module docstring).

    Args:
        images: ``2 N`` encoded images (written unchanged) or ``(H, W, 3)`` uint8 RGB arrays
            (encoded as JPEG ``quality``); items ``2k`` and ``2k+1`` form pair ``k``.
        issame: ``N`` labels.
    The file is written to a temporary name and renamed, so a crash leaves no partial file.
    """
    issame = [bool(x) for x in np.asarray(issame, dtype=bool).reshape(-1)]
    if len(images) != 2 * len(issame) or not issame:
        raise ValueError(f"need 2 images per pair: {len(images)} images for {len(issame)} pairs")
    bins = []
    for k, im in enumerate(images):
        if isinstance(im, np.ndarray):
            bins.append(encode_image(im, ".jpg", quality))
        elif isinstance(im, (bytes, bytearray, memoryview)):
            bins.append(bytes(im))
        else:
            raise ValueError(f"image {k} is {type(im).__name__}: pass encoded bytes or arrays")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump((bins, issame), f, protocol=BIN_PROTOCOL)
    os.replace(tmp, path)


def decode_image(data: bytes | str, size: int = 112) -> np.ndarray:
    """Decode one aligned crop to ``(size, size, 3)`` uint8 RGB.

    Like insightface's loader: an image whose width is not ``size`` goes through
    ``mx.image.resize_short(img, size)`` (shorter side -> ``size``, longer side
    ``size * long // short``, ``interp=2`` = OpenCV ``INTER_CUBIC``); a non-square result raises.
    """
    img = read_rgb(data)
    h, w = img.shape[:2]
    if w != size:
        new_w, new_h = (size, size * h // w) if h > w else (size * w // h, size)
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    if img.shape[:2] != (size, size):
        raise ValueError(f"expected a square aligned crop, got {h}x{w}")
    return img


class ImageListDataset:
    """Map-style dataset over aligned crops (``PairSet.images`` of a ``.bin``, or paths).

    Items follow ``facekd.data.batching``: ``image`` ``(3, size, size)`` float in [-1, 1]
    (``decode_image`` then ``to_tensor``), ``label`` -1, ``index`` the position in ``images``.
    """

    def __init__(self, images: Sequence[bytes | str], size: int = 112) -> None:
        self.images = images
        self.size = size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {
            "image": to_tensor(decode_image(self.images[index], self.size)),
            "label": -1,
            "index": index,
        }
