"""IJB-B/C 1:1 meta readers and the landmark-aligned dataset on a fixture in the exact layout."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facekd.data.align import ARCFACE_TEMPLATE, transform_points
from facekd.data.ijb import (
    IJBDataset,
    load_ijb,
    read_landmarks,
    read_template_media,
    read_template_pairs,
)


def _face(size=112):
    """A smooth synthetic 'aligned face': gradients plus a blob at every template landmark."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.stack([x * 1.5, y * 1.5, 128 + 60 * np.sin(x / 9) * np.cos(y / 11)], -1)
    for k, (px, py) in enumerate(ARCFACE_TEMPLATE):
        img[..., k % 3] += 120 * np.exp(-((x - px) ** 2 + (y - py) ** 2) / 30)
    return np.clip(img, 0, 255).astype(np.uint8)


def _similarity(scale, angle, tx, ty):
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


# image name, template id, media id, (scale, angle, tx, ty) placing the face, faceness score
IMAGES = [
    ("1.jpg", 11, 100, (1.6, 0.20, 40.0, 20.0), 0.99),
    ("2.jpg", 11, 100, (1.2, -0.10, 30.0, 60.0), 0.75),
    ("3.jpg", 11, 101, (2.0, 0.00, 10.0, 5.0), 0.50),
    ("frames/4.png", 12, 200, (1.4, 0.35, 70.0, 30.0), 0.875),
]
PAIRS = [(11, 12, 0), (11, 11, 1), (12, 12, 1)]


def _write_fixture(root, prefix="ijbc", images=IMAGES, pairs=PAIRS):
    (root / "meta").mkdir(parents=True, exist_ok=True)
    face = cv2.cvtColor(_face(), cv2.COLOR_RGB2BGR)
    tid_mid, pts = [], []
    for name, tid, mid, sim, score in images:
        m = _similarity(*sim)
        loose = cv2.warpAffine(face, m, (260, 240), flags=cv2.INTER_LINEAR)
        path = root / "loose_crop" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), loose, [cv2.IMWRITE_JPEG_QUALITY, 100] if "jpg" in name else [])
        lmk = transform_points(ARCFACE_TEMPLATE, m)
        tid_mid.append(f"{name} {tid} {mid}")
        pts.append(" ".join([name, *(f"{v:.4f}" for v in lmk.ravel()), str(score)]))
    (root / "meta" / f"{prefix}_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (root / "meta" / f"{prefix}_name_5pts_score.txt").write_text("\n".join(pts) + "\n")
    lines = "\n".join(f"{a} {b} {c}" for a, b, c in pairs)
    (root / "meta" / f"{prefix}_template_pair_label.txt").write_text(lines + "\n")
    return root


def test_readers_return_the_published_columns(tmp_path):
    meta = _write_fixture(tmp_path) / "meta"
    names, tids, mids = read_template_media(meta / "ijbc_face_tid_mid.txt")
    assert names.tolist() == [n for n, *_ in IMAGES]
    assert tids.tolist() == [11, 11, 11, 12] and mids.tolist() == [100, 100, 101, 200]
    assert tids.dtype == np.int64
    t1, t2, label = read_template_pairs(meta / "ijbc_template_pair_label.txt")
    assert t1.tolist() == [11, 11, 12] and t2.tolist() == [12, 11, 12]
    assert label.tolist() == [0, 1, 1]
    names, lmk, score = read_landmarks(meta / "ijbc_name_5pts_score.txt")
    assert lmk.shape == (4, 5, 2) and lmk.dtype == np.float32 and score.dtype == np.float32
    np.testing.assert_allclose(score, [s for *_, s in IMAGES])
    expected = transform_points(ARCFACE_TEMPLATE, _similarity(*IMAGES[0][3]))
    np.testing.assert_allclose(lmk[0], expected, atol=1e-4)


def test_dataset_aligns_from_given_landmarks(tmp_path):
    ds = IJBDataset(_write_fixture(tmp_path))
    assert len(ds) == 4
    face = _face().astype(np.float64)
    inner = (slice(8, 104), slice(8, 104))
    for i in range(4):
        crop = ds.aligned(i).astype(np.float64)
        assert crop.shape == (112, 112, 3)
        assert np.abs(crop[inner] - face[inner]).mean() < 1.5  # back to the template frame
    shuffled = np.abs(ds.aligned(0)[:, ::-1].astype(float)[inner] - face[inner]).mean()
    assert shuffled > 10.0  # the check above can fail
    item = ds[3]
    assert item["image"].shape == (3, 112, 112) and item["index"] == 3
    assert item["label"] == -1 and item["score"] == pytest.approx(0.875)
    assert float(item["image"].min()) >= -1.0 and float(item["image"].max()) <= 1.0


def test_ijbb_prefix_and_missing_images(tmp_path):
    _write_fixture(tmp_path, "ijbb")
    meta = load_ijb(tmp_path, "IJBB")
    assert meta.missing_images() == []
    (tmp_path / "loose_crop" / "2.jpg").unlink()
    assert meta.missing_images() == [str(tmp_path / "loose_crop" / "2.jpg")]
    with pytest.raises(ValueError, match="IJBB' or 'IJBC"):
        load_ijb(tmp_path, "IJBA")


def test_per_image_files_must_agree(tmp_path):
    _write_fixture(tmp_path)
    pts = tmp_path / "meta" / "ijbc_name_5pts_score.txt"
    lines = pts.read_text().splitlines()
    pts.write_text("\n".join([lines[1], lines[0], *lines[2:]]))
    with pytest.raises(ValueError, match=r"line 1 names '1.jpg' .* '2.jpg'"):
        load_ijb(tmp_path)
    pts.write_text("\n".join(lines[:3]))
    with pytest.raises(ValueError, match="4 images in ijbc_face_tid_mid.txt but 3"):
        load_ijb(tmp_path)


def test_pair_templates_without_images_raise(tmp_path):
    _write_fixture(tmp_path, pairs=[*PAIRS, (11, 99, 0)])
    with pytest.raises(ValueError, match=r"1 templates .* no image, e.g. \[99\]"):
        load_ijb(tmp_path)


@pytest.mark.parametrize(
    ("fname", "text", "error"),
    [
        ("ijbc_face_tid_mid.txt", "1.jpg 11 100\n2.jpg 11\n", r"tid_mid\.txt:2: expected"),
        ("ijbc_face_tid_mid.txt", "1.jpg 11 x\n", r"tid_mid\.txt:1: expected a number"),
        ("ijbc_name_5pts_score.txt", "1.jpg 1 2 3\n", r"score\.txt:1: expected .* got 4"),
        ("ijbc_template_pair_label.txt", "1 2 0\n3 4 2\n", r"row 2: label must be 0 or 1"),
        ("ijbc_template_pair_label.txt", "1 2 0\n3 4\n", r"pair_label\.txt: .*"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, fname, text, error):
    path = tmp_path / fname
    path.write_text(text)
    reader = {
        "ijbc_face_tid_mid.txt": read_template_media,
        "ijbc_name_5pts_score.txt": read_landmarks,
        "ijbc_template_pair_label.txt": read_template_pairs,
    }[fname]
    with pytest.raises(ValueError, match=error):
        reader(path)
