"""Tight-crop detection (detect_with_context) and frozen verification sets (set_manifest)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from facekd.data.align import norm_crop, template_for
from facekd.data.detect import Detection, detect_with_context
from facekd.data.packing import build_bin
from facekd.data.set_manifest import compare_manifests, load_set, manifest_path, read_manifest
from facekd.data.verification import PairSet, read_bin
from tests.conftest import shared_path


def _face(box, lm):
    return Detection(np.asarray(box, float), 0.99, np.asarray(lm, float))


class _Recorder:
    """A detector whose face (box and landmarks given in unpadded coordinates) is reported
    off the frame until the photo is large enough, when it is reported shifted by the pad."""

    def __init__(self, box, lm, min_side):
        self.box, self.lm, self.min_side, self.calls = np.asarray(box), np.asarray(lm), min_side, []

    def detect(self, images):
        self.calls.append([im.shape for im in images])
        out = []
        for im in images:
            if im.shape[0] < self.min_side:  # the unpadded photo: box leaves it at the top
                out.append([_face(self.box, self.lm)])
            else:  # padded by (dx, dy) = 0.4 x (W, H)
                dx, dy = round(0.4 * im.shape[1] / 1.8), round(0.4 * im.shape[0] / 1.8)
                shift = np.array([dx, dy])
                out.append([_face(self.box + np.tile(shift, 2), self.lm + shift + 1.0)])
        return out


def test_context_is_used_only_when_the_box_leaves_the_photo():
    photo = np.random.default_rng(0).integers(0, 255, (100, 80, 3), dtype=np.uint8)
    lm = template_for(112) * 0.6 + 5
    inside = _Recorder([5, 5, 75, 95], lm, min_side=101)
    assert detect_with_context(inside, [photo])[0][0].padded is False
    assert len(inside.calls) == 1  # a face inside the frame: one look only
    tight = _Recorder([5, -20, 75, 95], lm, min_side=101)
    (face,) = detect_with_context(tight, [photo])[0]
    assert len(tight.calls) == 2 and tight.calls[1] == [(180, 144, 3)]  # 40 % a side
    assert face.padded and face.box[1] == pytest.approx(-20)  # back in the photo's pixels
    np.testing.assert_allclose(face.landmarks, lm + 1.0)  # the second look's landmarks
    # the crop is cut from the photo itself, insightface's black border where it leaves it
    np.testing.assert_array_equal(face.crop(photo), norm_crop(photo, face.landmarks))
    assert detect_with_context(tight, [photo], looks=())[0][0].padded is False


class _OnlyInBlack:
    """Finds a face only in photos with a black top-left pixel (the black-bordered look)."""

    def __init__(self):
        self.calls = 0

    def detect(self, images):
        self.calls += 1
        lm = template_for(112) * 0.5 + 30
        return [[_face([20, 20, 90, 90], lm)] if im[0, 0].max() == 0 else [] for im in images]


def test_a_black_border_is_the_last_look():
    photo = np.full((100, 100, 3), 200, np.uint8)
    det = _OnlyInBlack()
    (face,) = detect_with_context(det, [photo])[0]
    assert det.calls == 3 and face.padded  # photo, replicated border, black border
    np.testing.assert_allclose(face.landmarks, template_for(112) * 0.5 + 30 - 25)  # 0.25 x 100
    assert detect_with_context(_OnlyInBlack(), [photo], looks=(("replicate", 0.4),))[0] == []


def _write_photos(tmp_path, n=6):
    rng = np.random.default_rng(1)
    paths = []
    for k in range(n):
        p = tmp_path / "photos" / f"id{k // 2}" / f"{k}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 255, (120, 120, 3), dtype=np.uint8))
        paths.append(str(p))
    return paths


class _Centre:
    def detect(self, images):
        return [[_face([30, 30, 90, 90], template_for(112) * 0.5 + 32)] for _ in images]


def test_build_twice_is_byte_identical_and_the_manifest_reads_back(tmp_path):
    paths = _write_photos(tmp_path)
    ids = [f"id{k // 2}" for k in range(6)]
    ps = PairSet(paths, [[0, 1], [2, 4], [2, 3], [1, 5]], [1, 0, 1, 0], [0, 0, 1, 1], "t", ids)
    a = build_bin(ps, tmp_path / "a" / "t.bin", _Centre(), root=tmp_path / "photos")
    b = build_bin(ps, tmp_path / "b" / "t.bin", _Centre(), root=tmp_path / "photos")
    assert (tmp_path / "a" / "t.bin").read_bytes() == (tmp_path / "b" / "t.bin").read_bytes()
    assert a.pixels_sha256 == b.pixels_sha256
    man = read_manifest(manifest_path(tmp_path / "a" / "t.bin"))
    assert man["images"][0] == "id0/0.png" and man["identities"] == ids
    # read back as the distinct faces with identities: each crop once, pairs into them
    back = load_set(tmp_path / "a" / "t.bin")
    assert len(back.images) == 6 and back.identities == ids
    flat = read_bin(tmp_path / "a" / "t.bin")
    assert [back.images[i] for i in back.pairs.reshape(-1)] == flat.images
    assert back.folds.tolist() == [0, 0, 1, 1]


def test_a_rebuild_that_differs_is_reported(tmp_path):
    paths = _write_photos(tmp_path)
    ps = PairSet(paths, [[0, 1], [2, 4]], [1, 0], [0, 0], "t", [f"id{k // 2}" for k in range(6)])
    build_bin(ps, tmp_path / "t.bin", _Centre())
    frozen = tmp_path / "frozen.json"
    frozen.write_text(manifest_path(tmp_path / "t.bin").read_text())
    same = build_bin(ps, tmp_path / "t2.bin", _Centre(), frozen=frozen)
    assert same.drift == [] and "identical to the frozen set" in str(same)
    img = cv2.imread(paths[4])
    cv2.imwrite(paths[4], 255 - img)  # one photo changes: its crop's pixels change
    moved = build_bin(ps, tmp_path / "t3.bin", _Centre(), frozen=frozen)
    assert moved.drift == ["1 of 4 crops differ: id2/4.png"] and "DIFFERS" in str(moved)
    other = PairSet(paths, [[0, 1], [2, 4], [0, 4]], [1, 0, 0], [0, 0, 0], "t", ps.identities)
    assert (
        "pair list differs"
        in compare_manifests(
            json.loads(frozen.read_text()),
            read_manifest(manifest_path(build_bin(other, tmp_path / "t4.bin", _Centre()).path)),
        )[0]
    )


def test_a_bin_that_does_not_match_its_manifest_is_refused(tmp_path):
    paths = _write_photos(tmp_path)
    ps = PairSet(paths, [[0, 1], [2, 4]], [1, 0], [0, 0], "t", [f"id{k // 2}" for k in range(6)])
    build_bin(ps, tmp_path / "t.bin", _Centre())
    data = bytearray((tmp_path / "t.bin").read_bytes())
    build_bin(PairSet(paths, [[0, 1], [2, 5]], [1, 0], [0, 0], "t", ps.identities),
              tmp_path / "u.bin", _Centre())  # fmt: skip
    (tmp_path / "u.bin").write_bytes(bytes(data))  # u.bin's manifest no longer fits it
    with pytest.raises(ValueError, match="does not match"):
        load_set(tmp_path / "u.bin")


def test_pair_labels_must_agree_with_identities():
    with pytest.raises(ValueError, match="labelled same but its identities are 'a' and 'b'"):
        PairSet(["x", "y"], [[0, 1]], [True], [0], "t", ["a", "b"])


def test_real_cfp_tight_frontal_gets_context_and_lfw_does_not():
    """On real photos: CFP's tight frontal crops need the second look, LFW's never do."""
    from facekd.data.detect import FaceDetector
    from facekd.data.transforms import read_rgb

    cfp = shared_path("cfp-mini", "Data", "Images")
    lfw = shared_path("lfw-mini", "images")
    det = FaceDetector(policy="center")
    cfp_photos = [read_rgb(str(p)) for p in sorted(cfp.glob("00[1-3]/frontal/01.jpg"))]
    lfw_photos = [read_rgb(str(p)) for p in sorted(lfw.glob("A*/*_0001.jpg"))[:3]]
    cfp_faces = detect_with_context(det, cfp_photos)
    lfw_faces = detect_with_context(det, lfw_photos)
    assert all(f and not f[0].padded for f in lfw_faces)
    assert any(f and f[0].padded for f in cfp_faces)


def test_images_no_pair_uses_are_left_out_of_the_set(tmp_path):
    paths = _write_photos(tmp_path)
    ids = [f"id{k // 2}" for k in range(6)]
    ps = PairSet(paths, [[0, 1], [2, 5]], [1, 0], [0, 0], "t", ids)  # 3 and 4 unused
    report = build_bin(ps, tmp_path / "t.bin", _Centre())
    back = load_set(tmp_path / "t.bin")
    assert report.n_images == 4 and back.identities == ["id0", "id0", "id1", "id2"]
    assert back.pairs.tolist() == [[0, 1], [2, 3]]


def test_a_pair_list_whose_labels_contradict_its_layout_still_builds(tmp_path):
    """A 'different' CFP pair of one person's photos keeps the protocol, drops identities."""
    from facekd.data.pairlists import read_cfp_pairs

    proto = tmp_path / "Protocol"
    for k, who in enumerate(("001", "001", "002"), start=1):
        photo = tmp_path / "Data" / "Images" / who / "frontal" / f"0{k}.jpg"
        photo.parent.mkdir(parents=True, exist_ok=True)
        photo.write_bytes(b"x")
    (proto / "Split" / "FF" / "01").mkdir(parents=True)
    (proto / "Pair_list_F.txt").write_text(
        "1 ../Data/Images/001/frontal/01.jpg\n2 ../Data/Images/001/frontal/02.jpg\n"
        "3 ../Data/Images/002/frontal/03.jpg\n"
    )
    (proto / "Pair_list_P.txt").write_text("")
    (proto / "Split" / "FF" / "01" / "same.txt").write_text("1,2\n")
    (proto / "Split" / "FF" / "01" / "diff.txt").write_text("1,3\n")
    assert read_cfp_pairs(tmp_path, "FF").identities == ["001", "001", "002"]
    (proto / "Split" / "FF" / "01" / "diff.txt").write_text("1,2\n")  # same person, 'diff'
    with pytest.warns(UserWarning, match="identities left out"):
        ps = read_cfp_pairs(tmp_path, "FF")
    assert ps.identities is None and len(ps) == 2
