"""IJB-B / IJB-C 1:1 verification data in the layout of insightface ``eval_ijbc.py``.

``<root>/`` (e.g. ``IJBC/``) holds, with ``<p>`` = ``ijbc`` or ``ijbb``:

* ``meta/<p>_face_tid_mid.txt``: ``image_name template_id media_id`` per line, one line per
  face image (IJB-C: 469,375);
* ``meta/<p>_template_pair_label.txt``: ``template_id_1 template_id_2 label`` (label 1 =
  genuine, 0 = impostor; IJB-C: 15,658,489 lines);
* ``meta/<p>_name_5pts_score.txt``: ``image_name x1 y1 ... x5 y5 faceness_score``, landmarks in
  pixels of the loose crop, in ArcFace template order (left eye, right eye, nose, left /
  right mouth corner);
* ``loose_crop/<image_name>``: the loosely cropped images.

All files are space-separated without header. insightface reads the two per-image files
independently and relies on them listing the same images in the same order; ``load_ijb``
checks that. Landmarks and scores are parsed as float32, as the reference does before
estimating the similarity transform. ``IJBDataset`` aligns each face from its five given
points with ``norm_crop`` (no detection) and returns the faceness score with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.data.align import norm_crop
from facekd.data.transforms import read_rgb, to_tensor


def _prefix(target: str) -> str:
    target = target.upper()
    if target not in ("IJBB", "IJBC"):
        raise ValueError(f"IJB target must be 'IJBB' or 'IJBC', got {target!r}")
    return target.lower()


def _number(token: str, kind, path, lineno: int):
    try:
        return kind(token)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: expected a number, got {token!r}") from None


def read_template_media(path: str | os.PathLike):
    """``<p>_face_tid_mid.txt`` -> ``names (I,) str``, ``tids (I,) int64``, ``mids (I,) int64``."""
    names, tids, mids = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3:
                raise ValueError(f"{path}:{lineno}: expected 'image template_id media_id'")
            names.append(fields[0])
            tids.append(_number(fields[1], int, path, lineno))
            mids.append(_number(fields[2], int, path, lineno))
    return np.array(names), np.array(tids, dtype=np.int64), np.array(mids, dtype=np.int64)


def read_template_pairs(path: str | os.PathLike):
    """``<p>_template_pair_label.txt`` -> ``t1 (P,)``, ``t2 (P,)``, ``label (P,)`` int64.

    Parsed with numpy's C reader (IJB-C has 15.7 M lines); errors name the file and row.
    """
    try:
        arr = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if arr.shape[0] == 0 or arr.shape[1] != 3:
        raise ValueError(f"{path}: expected lines 'tid1 tid2 label', got shape {arr.shape}")
    bad = np.flatnonzero(~np.isin(arr[:, 2], (0, 1)))
    if bad.size:
        raise ValueError(f"{path}: row {bad[0] + 1}: label must be 0 or 1, got {arr[bad[0], 2]}")
    return arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()


def read_landmarks(path: str | os.PathLike):
    """``<p>_name_5pts_score.txt`` -> ``names (I,)``, ``landmarks (I, 5, 2)``, ``scores (I,)``
    (float32)."""
    names, values = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 12:
                raise ValueError(
                    f"{path}:{lineno}: expected 'image x1 y1 ... x5 y5 score' (12 fields), "
                    f"got {len(fields)}"
                )
            names.append(fields[0])
            values.append([_number(v, float, path, lineno) for v in fields[1:]])
    v = np.array(values, dtype=np.float32).reshape(-1, 11)
    return np.array(names), v[:, :10].reshape(-1, 5, 2), v[:, 10].copy()


def read_1n_list(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """An IJB 1:N list (``<p>_1N_gallery_G1.csv`` / ``_G2`` / ``_probe_mixed.csv``; IJB-B:
    ``_S1`` / ``_S2``): CSV with a header, one row per image, columns ``TEMPLATE_ID,
    SUBJECT_ID, FILENAME, ...`` -> ``(templates (T,), subjects (T,))`` int64, one row per
    template (first appearance order). A template listed with two subjects raises."""
    subject: dict[int, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.strip().split(",")
            if lineno == 1 or not fields[0]:
                continue  # header (insightface: skiprows=1), blank lines
            if len(fields) < 2:
                raise ValueError(f"{path}:{lineno}: expected 'TEMPLATE_ID,SUBJECT_ID,...'")
            t, sid = _number(fields[0], int, path, lineno), _number(fields[1], int, path, lineno)
            if subject.setdefault(t, sid) != sid:
                raise ValueError(
                    f"{path}:{lineno}: template {t} listed with subjects {subject[t]} and {sid}"
                )
    if not subject:
        raise ValueError(f"{path}: no templates")
    return np.array(list(subject), np.int64), np.array(list(subject.values()), np.int64)


def ijb_1n_files(root: str | os.PathLike, target: str = "IJBC") -> dict[str, Path] | None:
    """``{"G1", "G2", "probe"}`` -> the 1:N lists under ``root/meta``, or None if absent."""
    p, meta = _prefix(target), Path(root) / "meta"
    g = ("G1", "G2") if p == "ijbc" else ("S1", "S2")
    files = {
        "G1": meta / f"{p}_1N_gallery_{g[0]}.csv",
        "G2": meta / f"{p}_1N_gallery_{g[1]}.csv",
        "probe": meta / f"{p}_1N_probe_mixed.csv",
    }
    return files if all(f.is_file() for f in files.values()) else None


@dataclass
class IJBMeta:
    """One IJB-B/C 1:1 protocol: ``I`` images and ``P`` template pairs.

    ``names (I,)``, ``tids (I,)``, ``mids (I,)``, ``landmarks (I, 5, 2)`` float32,
    ``scores (I,)`` float32 faceness, ``t1 / t2 / label (P,)`` int64; ``image_dir`` = loose_crop.
    """

    image_dir: Path
    names: np.ndarray
    tids: np.ndarray
    mids: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    t1: np.ndarray
    t2: np.ndarray
    label: np.ndarray

    def image_paths(self) -> list[str]:
        return [str(self.image_dir / n) for n in self.names]

    def missing_images(self) -> list[str]:
        """Paths under ``loose_crop`` that do not exist (stats every image)."""
        return [p for p in self.image_paths() if not os.path.isfile(p)]


def load_ijb(root: str | os.PathLike, target: str = "IJBC") -> IJBMeta:
    """Read and cross-check the three meta files of ``root`` (see module docstring).

    Raises ``ValueError`` when the per-image files disagree (count or order of names) or a
    template of the pair list has no image (the reference would silently score it with zeros).
    """
    root, p = Path(root), _prefix(target)
    meta = root / "meta"
    names, tids, mids = read_template_media(meta / f"{p}_face_tid_mid.txt")
    lm_names, landmarks, scores = read_landmarks(meta / f"{p}_name_5pts_score.txt")
    t1, t2, label = read_template_pairs(meta / f"{p}_template_pair_label.txt")
    if len(names) != len(lm_names):
        raise ValueError(
            f"{meta}: {len(names)} images in {p}_face_tid_mid.txt but {len(lm_names)} in "
            f"{p}_name_5pts_score.txt"
        )
    diff = np.flatnonzero(names != lm_names)
    if diff.size:
        i = int(diff[0])
        raise ValueError(
            f"{meta}: line {i + 1} names '{names[i]}' in {p}_face_tid_mid.txt but "
            f"'{lm_names[i]}' in {p}_name_5pts_score.txt (the files must list the same images "
            "in the same order)"
        )
    unknown = np.setdiff1d(np.union1d(t1, t2), tids)
    if unknown.size:
        raise ValueError(
            f"{meta}: {unknown.size} templates of {p}_template_pair_label.txt have no image, "
            f"e.g. {unknown[:5].tolist()}"
        )
    return IJBMeta(root / "loose_crop", names, tids, mids, landmarks, scores, t1, t2, label)


class IJBDataset:
    """Aligned IJB faces: item ``i`` is image line ``i`` of the meta files.

    ``__getitem__`` -> ``{"image": (3, size, size) float in [-1, 1], "label": -1,
    "index": i, "score": faceness float}``; with ``crops=True`` the ``(size, size, 3)`` uint8
    RGB crop itself, which ``extract_embeddings`` can resize to a low-resolution student's
    input or degrade (a normalised tensor is used as given). The loose crop is read as RGB and
    warped with ``norm_crop(image, landmarks[i], size)``; insightface warps the BGR image and
    converts afterwards, which gives identical pixels (the warp is per channel).
    """

    def __init__(
        self,
        meta: IJBMeta | str | os.PathLike,
        target: str = "IJBC",
        size: int = 112,
        crops: bool = False,
    ):
        self.meta = meta if isinstance(meta, IJBMeta) else load_ijb(meta, target)
        self.size, self.crops = size, crops

    def __len__(self) -> int:
        return len(self.meta.names)

    def aligned(self, index: int) -> np.ndarray:
        """``(size, size, 3)`` uint8 RGB aligned crop of image ``index``."""
        image = read_rgb(self.meta.image_dir / self.meta.names[index])
        return norm_crop(image, self.meta.landmarks[index], self.size)

    def __getitem__(self, index: int):
        if self.crops:
            return self.aligned(index)
        return {
            "image": to_tensor(self.aligned(index)),
            "label": -1,
            "index": index,
            "score": float(self.meta.scores[index]),
        }
