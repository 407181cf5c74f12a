"""``facekd align SRC DST``: turn a tree of raw photos into aligned ArcFace crops.

* Walks ``SRC`` at any depth (jpg / jpeg / png / bmp / webp, any case) and writes one crop per
  photo to the same relative path under ``DST`` (extension set by ``fmt``; see
  ``output_stems`` for same-stem sources; with the ``all`` face policy, faces after the first
  get ``_1``, ``_2`` ... suffixes).
* Decoding runs in DataLoader worker processes (``read_photo``: EXIF orientation, grayscale,
  CMYK, alpha); MTCNN runs in the main process on batches of same-sized photos.
* Resumable: a photo whose crop exists (and is non-empty) or that is listed as failed in the
  report is skipped, so an interrupted or repeated run does no new work. Crops are written to
  a temporary name and renamed, so a kill never leaves a half-written crop. ``overwrite=True``
  redoes everything; ``retry_failed=True`` retries the failures.
* One bad file never stops the run: every failure is recorded with a reason (``unreadable``,
  ``truncated``, ``empty``, ``too_small``, ``no_face``, ``small_face``) in
  ``DST/align_report.json``, together with counts.
* ``landmarks``: given five points per photo (e.g. IJB-C's ``name_5pts_score``) skip detection.
* Tight face crops (CelebA's, roughly eyebrows to chin) are handled from the data: a photo
  with no face, or whose face box leaves the frame, is detected again inside an edge-replicated
  border (``facekd.data.detect.detect_with_context``) and cut with a replicated border.
  ``pad=0.4`` still pads *every* photo by 40 % of each side first (e.g. with given landmarks,
  which refer to the unpadded photo and are shifted accordingly).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from facekd.data.align import pad_photo
from facekd.data.detect import Detection, detect_with_context
from facekd.data.transforms import PhotoError, read_photo

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
REPORT_NAME = "align_report.json"


def list_images(root: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of every image below ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"source folder {root} does not exist")
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


@dataclass
class AlignReport:
    """What a run did: ``written`` / ``skipped`` counts and ``failed`` {relative path: reason}."""

    written: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        reasons: dict[str, int] = {}
        for reason in self.failed.values():
            tag = reason.split(":")[0]
            reasons[tag] = reasons.get(tag, 0) + 1
        payload = {"written": self.written, "skipped": self.skipped, "failed_by_reason": reasons}
        payload["failed"] = dict(sorted(self.failed.items()))
        # a per-process name: two runs filling one folder must not rename each other's file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, path)


class _Photos(torch.utils.data.Dataset):
    def __init__(self, root: Path, names: list[str], min_side: int, pad: float = 0.0) -> None:
        self.root, self.names, self.min_side, self.pad = root, names, min_side, pad

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        try:
            img = read_photo(str(self.root / self.names[i]), self.min_side)
        except PhotoError as err:
            return self.names[i], None, f"{err.reason}: {err}", (0, 0)
        img, offset = pad_photo(img, self.pad)
        return self.names[i], img, None, offset


def _write_atomic(path: Path, crop_rgb: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else []
    ok, buf = cv2.imencode(f".{fmt}", cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OSError(f"could not encode {path}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


def output_stems(names: list[str]) -> dict[str, str]:
    """Relative output path without extension for each source name.

    ``a/img.jpg`` -> ``a/img``; when several sources share a stem (``img.jpg`` and
    ``img.png``), each keeps its extension in the stem (``img_jpg``, ``img_png``) so no crop
    overwrites another.
    """
    stems = [Path(n).with_suffix("").as_posix() for n in names]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    return {
        n: stem if counts[stem] == 1 else f"{stem}_{Path(n).suffix[1:].lower()}"
        for n, stem in zip(names, stems, strict=True)
    }


def _out_path(dst: Path, stem: str, fmt: str, face: int = 0) -> Path:
    return dst / f"{stem}{'' if face == 0 else f'_{face}'}.{fmt}"


def _plan(
    stems: dict[str, str],
    dst: Path,
    fmt: str,
    old_failed: Mapping[str, str],
    overwrite: bool,
    retry_failed: bool,
    report: AlignReport,
) -> list[str]:
    """The source names still to align, counting the rest in ``report.skipped``: a photo is done
    when its first crop exists and is non-empty, or when ``old_failed`` lists it (unless
    ``retry_failed``); ``overwrite`` redoes everything."""
    todo = []
    for name, stem in stems.items():
        out = _out_path(dst, stem, fmt)
        done = out.exists() and out.stat().st_size > 0
        if not overwrite and (done or (name in old_failed and not retry_failed)):
            report.skipped += 1
        else:
            todo.append(name)
    return todo


def _find_faces(
    good: list[tuple[str, np.ndarray]],
    offsets: dict[str, np.ndarray],
    landmarks: Mapping[str, np.ndarray] | None,
    detector,
    min_face: float,
) -> list[list[Detection] | None]:
    """Per decoded photo, the faces to crop: the given ``landmarks`` shifted by the padding
    ``offsets`` (``[]`` when a photo has none), else MTCNN's faces of at least ``min_face`` px
    (``detect_with_context``: a tight photo is detected again with an edge-replicated border);
    ``None`` when MTCNN found faces but all smaller."""
    if landmarks is not None:
        return [
            [Detection(np.zeros(4), 1.0, np.asarray(landmarks[n], np.float64) + offsets[n])]
            if n in landmarks
            else []
            for n, _ in good
        ]
    found = detect_with_context(detector, [img for _, img in good]) if good else []
    faces = []
    for dets in found:
        big = [d for d in dets if d.size >= min_face]
        faces.append(big if big or not dets else None)
    return faces


def align_tree(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    size: int = 112,
    policy: str = "center",
    fmt: str = "png",
    landmarks: Mapping[str, np.ndarray] | None = None,
    batch_size: int = 16,
    workers: int = 2,
    min_side: int = 24,
    min_face: float = 20.0,
    overwrite: bool = False,
    retry_failed: bool = False,
    detector=None,
    progress: bool = True,
    pad: float = 0.0,
) -> AlignReport:
    """Align every photo below ``src`` into ``dst``; returns (and saves) the report."""
    if fmt not in ("png", "jpg"):
        raise ValueError(f"fmt must be 'png' or 'jpg', got {fmt!r}")
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    report_path = dst / REPORT_NAME
    old_failed: dict[str, str] = {}
    if report_path.exists() and not overwrite:
        old_failed = json.loads(report_path.read_text()).get("failed", {})
    report = AlignReport(failed={} if retry_failed else dict(old_failed))
    stems = output_stems(list_images(src))
    todo = _plan(stems, dst, fmt, old_failed, overwrite, retry_failed, report)
    if detector is None and landmarks is None and todo:
        from facekd.data.detect import FaceDetector

        detector = FaceDetector(min_face_size=int(min_face), policy=policy)
    loader = torch.utils.data.DataLoader(
        _Photos(src, todo, min_side, pad),
        batch_size=batch_size,
        num_workers=workers if len(todo) > batch_size else 0,
        collate_fn=list,
    )
    bar = tqdm(total=len(todo), desc="align", unit="img", disable=not progress)
    for chunk in loader:
        good = [(name, img) for name, img, err, _ in chunk if err is None]
        offsets = {name: np.asarray(off, np.float64) for name, _, _, off in chunk}
        for name, _, err, _ in chunk:
            if err is not None:
                report.failed[name] = err
        faces = _find_faces(good, offsets, landmarks, detector, min_face)
        for (name, img), lms in zip(good, faces, strict=True):
            if lms is None:
                report.failed[name] = f"small_face: every face is under {min_face:g} px"
            elif not lms:
                report.failed[name] = "no_face: " + (
                    "no landmarks given" if landmarks else "MTCNN found none"
                )
            else:
                for k, det in enumerate(lms):
                    _write_atomic(_out_path(dst, stems[name], fmt, k), det.crop(img, size), fmt)
                report.written += 1
                report.failed.pop(name, None)
        bar.update(len(chunk))
        report.save(report_path)  # a killed run keeps what it learnt about failures
    bar.close()
    report.save(report_path)
    return report
