"""`align_tree`: bad files are reported, never fatal; reruns do no new work; layout preserved."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from facekd.data.align import ARCFACE_TEMPLATE, transform_points
from facekd.data.align_tree import REPORT_NAME, align_tree, list_images
from facekd.data.transforms import PhotoError, read_photo
from tests.conftest import shared_path


def _photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (200, 180, 3), dtype=np.uint8))


@pytest.fixture
def messy_tree(tmp_path):
    src = tmp_path / "src"
    (src / "x" / "y").mkdir(parents=True)
    good = _photo()
    good.save(src / "x" / "y" / "deep.JPG")
    good.convert("L").save(src / "gray.png")
    good.convert("CMYK").save(src / "cmyk.jpg")
    good.convert("RGBA").save(src / "alpha.png")
    good.save(src / "img.webp")
    good.save(src / "img.bmp")
    (src / "empty.jpg").write_bytes(b"")
    (src / "garbage.png").write_bytes(os.urandom(300))
    good.save(src / "full.jpg")
    data = (src / "full.jpg").read_bytes()
    (src / "cut.jpg").write_bytes(data[: len(data) // 3])
    (src / "full.jpg").unlink()
    good.resize((12, 12)).save(src / "tiny.png")
    (src / "readme.txt").write_text("not an image")
    return src


def _landmarks_for(names):
    # the template moved by a similarity: every good photo gets valid five points
    m = np.array([[1.2, 0.1, 20.0], [-0.1, 1.2, 30.0]])
    return {n: transform_points(ARCFACE_TEMPLATE, m) for n in names}


def test_bad_files_are_reported_and_reruns_do_nothing(messy_tree, tmp_path):
    names = list_images(messy_tree)
    assert "readme.txt" not in names and "x/y/deep.JPG" in names
    lms = _landmarks_for([n for n in names if n != "img.bmp"])  # img.bmp: "no face"
    dst = tmp_path / "dst"
    report = align_tree(messy_tree, dst, landmarks=lms, progress=False, workers=0)
    assert report.written == 5  # deep.JPG, gray, cmyk, alpha, webp
    reasons = {name: why.split(":")[0] for name, why in report.failed.items()}
    assert reasons == {
        "empty.jpg": "empty",
        "garbage.png": "unreadable",
        "cut.jpg": "truncated",
        "tiny.png": "too_small",
        "img.bmp": "no_face",
    }
    crop = np.asarray(Image.open(dst / "x" / "y" / "deep.png"))
    assert crop.shape == (112, 112, 3)
    saved = json.loads((dst / REPORT_NAME).read_text())
    assert saved["failed_by_reason"]["truncated"] == 1 and set(saved["failed"]) == set(reasons)

    mtimes = {p: p.stat().st_mtime_ns for p in dst.rglob("*.png")}
    again = align_tree(messy_tree, dst, landmarks=lms, progress=False, workers=0)
    assert again.written == 0 and again.skipped == len(names)
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*.png")} == mtimes, "no crop rewritten"

    lms["img.bmp"] = lms["gray.png"]
    retry = align_tree(messy_tree, dst, landmarks=lms, retry_failed=True, progress=False)
    assert retry.written == 1 and "img.bmp" not in retry.failed
    assert (dst / "img_bmp.png").exists() and (dst / "img_webp.png").exists()


def test_crop_matches_the_given_landmarks(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    img = np.zeros((240, 220, 3), np.uint8)
    m = np.array([[1.5, -0.2, 10.0], [0.2, 1.5, 5.0]])
    pts = transform_points(ARCFACE_TEMPLATE, m)
    for x, y in pts.round().astype(int):
        img[y - 2 : y + 3, x - 2 : x + 3] = 255
    Image.fromarray(img).save(src / "a.png")
    align_tree(src, tmp_path / "d", landmarks={"a.png": pts}, progress=False)
    crop = np.asarray(Image.open(tmp_path / "d" / "a.png"))
    for x, y in ARCFACE_TEMPLATE.round().astype(int):
        assert crop[y, x].min() > 150


def test_read_photo_applies_exif_orientation(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255  # left half white
    im = Image.fromarray(arr).transpose(Image.Transpose.ROTATE_90)  # stored rotated
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    shown = read_photo(str(tmp_path / "r.jpg"))
    assert shown.shape[:2] == (40, 80)
    with pytest.raises(PhotoError) as err:
        read_photo(str(tmp_path / "missing.jpg"))
    assert err.value.reason == "unreadable"


def test_real_lfw_photos_are_detected_and_aligned(tmp_path):
    root = shared_path("lfw-mini", "images")
    src = tmp_path / "raw"
    for person in sorted(p for p in root.iterdir() if p.is_dir())[:3]:
        shutil.copytree(person, src / person.name)
    report = align_tree(src, tmp_path / "aligned", progress=False, workers=0)
    assert report.failed == {} and report.written == len(list_images(src))


def test_pad_fills_margins_with_edge_colours_and_keeps_landmarks(tmp_path):
    # a "tight crop": the face's five points near the photo's borders, the template's margins
    # fall outside it; with pad the crop's corners are the photo's edge colour, not black
    src = tmp_path / "s"
    src.mkdir()
    img = np.full((80, 70, 3), 90, np.uint8)
    m = np.array([[0.75, 0.0, -6.0], [0.0, 0.75, -8.0]])
    pts = transform_points(ARCFACE_TEMPLATE, m)
    for x, y in pts.round().astype(int):
        img[y - 1 : y + 2, x - 1 : x + 2] = 255
    Image.fromarray(img).save(src / "a.png")
    for pad, out in ((0.0, "d0"), (0.4, "d4")):
        align_tree(src, tmp_path / out, landmarks={"a.png": pts}, progress=False, pad=pad)
    plain = np.asarray(Image.open(tmp_path / "d0" / "a.png"))
    padded = np.asarray(Image.open(tmp_path / "d4" / "a.png"))
    assert plain[0, 0].max() == 0 and plain[-1, -1].max() == 0  # outside the photo: black
    assert (padded[0, 0] == 90).all() and (padded[-1, -1] == 90).all()  # replicated edge
    for x, y in ARCFACE_TEMPLATE.round().astype(int):  # the landmarks moved with the padding
        assert padded[y, x].min() > 150
    with pytest.raises(ValueError, match="pad must be >= 0"):
        align_tree(src, tmp_path / "d5", landmarks={"a.png": pts}, progress=False, pad=-0.1)


def test_real_tight_celeba_crops_align_with_filled_margins(tmp_path):
    root = shared_path("celeba-tight-1756", "images")
    src = tmp_path / "raw"
    for person in sorted(p for p in root.iterdir() if p.is_dir())[:2]:
        shutil.copytree(person, src / person.name)
    total = len(list_images(src))
    plain = align_tree(src, tmp_path / "u", progress=False, workers=0)
    padded = align_tree(src, tmp_path / "p", progress=False, workers=0, pad=0.4)
    assert padded.written >= total - 1  # the data README: 59 / 60 found with 40 % padding

    def black(folder):  # share of pure-black pixels: the template's margins outside the photo
        crops = [np.asarray(Image.open(f)) for f in sorted((tmp_path / folder).rglob("*.png"))]
        return np.mean([(c.max(axis=2) == 0).mean() for c in crops])

    assert plain.written > 0 and black("u") > 0.05 and black("p") < 0.01


def test_report_saves_do_not_collide_across_processes(tmp_path):
    from facekd.data.align_tree import AlignReport

    path = tmp_path / REPORT_NAME
    other = tmp_path / f".{REPORT_NAME}.{os.getpid() + 1}.tmp"  # another run, mid-write
    other.write_text("{half")
    AlignReport(written=2, failed={"a.jpg": "no_face: x"}).save(path)
    saved = json.loads(path.read_text())
    assert saved["written"] == 2 and saved["failed_by_reason"] == {"no_face": 1}
    assert other.read_text() == "{half"  # its temporary file is not ours to rename
