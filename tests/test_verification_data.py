"""Verification data: .bin round trip and safety, PairSet, pair-list readers, .bin building."""

from __future__ import annotations

import os
import pathlib
import pickle
import pickletools
import re

import cv2
import numpy as np
import pytest

from facekd.data.align import estimate_norm, norm_crop
from facekd.data.detect import Detection
from facekd.data.packing import build_bin, centre_landmarks
from facekd.data.pairlists import (
    read_cfp_pairs,
    read_cplfw_pairs,
    read_lfw_pairs,
    read_xlfw_pairs,
)
from facekd.data.verification import (
    ImageListDataset,
    PairSet,
    decode_image,
    encode_image,
    read_bin,
    write_bin,
)
from tests.conftest import shared_path


def _images(n, size=112, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _encoded(n):
    imgs = _images(n)
    return [encode_image(im, ".png" if i % 3 == 0 else ".jpg") for i, im in enumerate(imgs)]


# ---------------------------------------------------------------- .bin files
def test_bin_round_trip_is_bit_identical(tmp_path):
    bins, issame = _encoded(6), [True, False, True]
    write_bin(tmp_path / "x.bin", bins, issame)
    ps = read_bin(tmp_path / "x.bin")
    assert ps.images == bins and ps.name == "x"
    assert ps.issame.tolist() == issame and ps.pairs.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert (ps.folds == -1).all() and ps.n_folds == 0
    write_bin(tmp_path / "y.bin", ps.images, ps.issame)
    assert (tmp_path / "x.bin").read_bytes() == (tmp_path / "y.bin").read_bytes()


def test_written_bin_is_what_insightface_loader_expects(tmp_path):
    """insightface: ``bins, issame_list = pickle.load(f)``; no global needed at all."""
    write_bin(tmp_path / "x.bin", _images(4), np.array([1, 0]))
    data = (tmp_path / "x.bin").read_bytes()
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert not ops & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ"}
    bins, issame = pickle.loads(data)
    assert issame == [True, False] and all(type(b) is bytes for b in bins)
    assert all(decode_image(b).shape == (112, 112, 3) for b in bins)


def _py2_bin(bins, issame):
    """A Python-2 style pickle: BINSTRING image bytes, issame as a numpy bool array."""
    out = b"\x80\x02](" + b"".join(b"T" + len(b).to_bytes(4, "little") + b for b in bins)
    out += b"e" + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
    out += b"(K\x01K" + bytes([len(issame)]) + b"\x85cnumpy\ndtype\nU\x02b1K\x00K\x01\x87R"
    out += b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
    out += b"U" + bytes([len(issame)]) + bytes(int(x) for x in issame) + b"tb\x86."
    return out


def test_reads_python2_pickles_and_other_protocols(tmp_path):
    bins = _encoded(4)
    (tmp_path / "py2.bin").write_bytes(_py2_bin(bins, [False, True]))
    ps = read_bin(tmp_path / "py2.bin")
    assert ps.images == bins and ps.issame.tolist() == [False, True]
    arrays = [np.frombuffer(b, np.uint8) for b in bins]
    for proto in range(6):
        obj = (arrays, [np.bool_(True), np.bool_(False)])
        (tmp_path / "p.bin").write_bytes(pickle.dumps(obj, protocol=proto))
        assert read_bin(tmp_path / "p.bin").images == bins


class _Touch:
    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


class _System:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.mark.parametrize("proto", [0, 2, 4])
def test_malicious_bin_is_refused_without_running_code(tmp_path, proto):
    marker = tmp_path / "pwned"
    live = pickle.dumps(([b"x", _Touch(marker)], [True]), protocol=proto)
    pickle.loads(live)  # the payload is live: the plain loader runs it
    assert marker.exists()
    marker.unlink()
    # protocols < 4 reach Path.touch through builtins.getattr; os.system is posix.system
    for payload, name in ((_Touch(marker), "pathlib|getattr"), (_System(marker), "system")):
        (tmp_path / "evil.bin").write_bytes(pickle.dumps(([b"x", payload], [True]), proto))
        with pytest.raises(ValueError, match=rf"evil\.bin: refused global \S*({name})"):
            read_bin(tmp_path / "evil.bin")
        assert not marker.exists()


def test_truncated_garbage_and_inconsistent_files_name_the_file(tmp_path):
    write_bin(tmp_path / "ok.bin", _encoded(4), [True, False])
    data = (tmp_path / "ok.bin").read_bytes()
    cases = {
        "trunc.bin": data[: len(data) // 2],
        "garbage.bin": np.random.default_rng(0).bytes(300),
        "empty.bin": b"",
        "dict.bin": pickle.dumps({"a": 1}),
        "odd.bin": pickle.dumps((_encoded(3), [True, False])),
        "labels.bin": pickle.dumps((_encoded(2), ["yes"])),
        "notbytes.bin": pickle.dumps(([1, 2], [True])),
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match=re.escape(name)):
            read_bin(tmp_path / name)


def test_write_bin_validates_counts(tmp_path):
    with pytest.raises(ValueError, match="2 images per pair"):
        write_bin(tmp_path / "x.bin", _encoded(3), [True, False])
    with pytest.raises(ValueError, match="2 images per pair"):
        write_bin(tmp_path / "x.bin", [], [])
    with pytest.raises(ValueError, match="image 0 is str"):
        write_bin(tmp_path / "x.bin", ["a.jpg", "b.jpg"], [True])
    assert not (tmp_path / "x.bin").exists()


def test_decode_image_follows_insightface_resize_short():
    assert decode_image(encode_image(_images(1, 128)[0], ".png")).shape == (112, 112, 3)
    img = _images(1, 112)[0]
    np.testing.assert_array_equal(decode_image(encode_image(img, ".png")), img)
    with pytest.raises(ValueError, match="square"):
        decode_image(encode_image(np.zeros((120, 100, 3), np.uint8), ".png"))
    item = ImageListDataset([encode_image(img, ".png")])[0]
    assert item["image"].shape == (3, 112, 112) and item["label"] == -1 and item["index"] == 0


def test_pairset_validation_and_fold_major():
    ps = PairSet(list("abcd"), [[0, 1], [2, 3], [1, 2]], [1, 0, 1], [1, 0, 1])
    fm = ps.fold_major()
    assert fm.folds.tolist() == [0, 1, 1] and fm.pairs.tolist() == [[2, 3], [0, 1], [1, 2]]
    assert fm.pair_images() == list("cdabbc") and fm.n_folds == 2
    with pytest.raises(ValueError, match="labels"):
        PairSet(list("ab"), [[0, 1]], [1, 0], [0])
    with pytest.raises(ValueError, match="indices"):
        PairSet(list("ab"), [[0, 2]], [1], [0])


# ---------------------------------------------------------------- pair lists
def test_lfw_pairs_real_file():
    root = shared_path("lfw-mini")
    ps = read_lfw_pairs(root / "pairs.txt", root / "images")  # also checks all files exist
    assert len(ps) == 1200 and len(ps.images) == 1583 and ps.n_folds == 2
    for f in range(2):
        assert ps.issame[ps.folds == f].tolist() == [True] * 300 + [False] * 300
    a, b = (ps.images[i] for i in ps.pairs[0])
    assert a.endswith("Abel_Pacheco/Abel_Pacheco_0001.jpg") and b.endswith("Abel_Pacheco_0004.jpg")


def _lfw_tree(tmp_path, lines):
    for line in lines[1:]:
        f = line.split("\t")
        for name, num in ((f[0], f[1]), (f[-2], f[-1])) if len(f) == 4 else ((f[0], f[1]),):
            p = tmp_path / "img" / name / f"{name}_{int(num):04d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
        if len(f) == 3:
            (tmp_path / "img" / f[0] / f"{f[0]}_{int(f[2]):04d}.jpg").touch()
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "pairs.txt", tmp_path / "img"


def test_lfw_pairs_generated_three_folds(tmp_path):
    lines = ["3\t1"]
    for f in range(3):
        lines += [f"P{f}\t1\t2", f"P{f}\t1\tQ{f}\t3"]
    ps = read_lfw_pairs(*_lfw_tree(tmp_path, lines))
    assert ps.folds.tolist() == [0, 0, 1, 1, 2, 2] and ps.issame.tolist() == [1, 0] * 3
    assert len(ps.images) == 9 and ps.pairs[1, 0] == ps.pairs[0, 0]  # P0_0001 shared


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (["2\t1", "A\t1\t2", "A\t1\tB\t1", "C\t1\tD\t2", "C\t1\t2"], r"pairs\.txt:4: .*matched"),
        (["1\t1", "A\tx\t2", "A\t1\tB\t1"], r"pairs\.txt:2: image number"),
        (["1\t2", "A\t1\t2", "A\t1\tB\t1"], "header promises"),
        (["one\t1", "A\t1\t2", "A\t1\tB\t1"], r"pairs\.txt:1: number of folds"),
    ],
)
def test_lfw_pairs_malformed(tmp_path, lines, error):
    (tmp_path / "pairs.txt").write_text("\n".join(lines))
    with pytest.raises(ValueError, match=error):
        read_lfw_pairs(tmp_path / "pairs.txt", tmp_path, check_files=False)


def test_missing_images_are_listed_together_and_capped(tmp_path):
    lines = ["1\t30"] + [f"N{i}\t1\t2" for i in range(30)] + [f"N{i}\t1\tM\t1" for i in range(30)]
    (tmp_path / "pairs.txt").write_text("\n".join(lines))
    with pytest.raises(
        FileNotFoundError, match=r"(?s)61 of 61 images .*N9_0002.jpg\n  \.\.\. and 41 more"
    ):
        read_lfw_pairs(tmp_path / "pairs.txt", tmp_path)


def test_cplfw_real_list_and_official_folds():
    ps = read_cplfw_pairs(shared_path("cplfw", "pairs_CPLFW.txt"), "/x", check_files=False)
    assert len(ps) == 6000 and ps.issame.sum() == 3000 and ps.n_folds == 10
    assert ps.images[0] == "/x/Ingrid_Betancourt_1.jpg"  # header line skipped
    names = np.array([re.sub(r"_\d+\.jpg$", "", os.path.basename(p)) for p in ps.images])
    fold_ids = [set(names[ps.pairs[ps.folds == f]].ravel()) for f in range(10)]
    for f in range(10):
        assert (ps.issame[ps.folds == f]).sum() == 300
        assert all(not (fold_ids[f] & fold_ids[g]) for g in range(f + 1, 10))


def test_calfw_style_list_and_errors(tmp_path):
    good = "A_1.jpg 1114\nA_2.jpg 1114\nB_1.jpg 0\nC_1.jpg 0\n"
    (tmp_path / "pairs_CALFW.txt").write_text(good)
    ps = read_xlfw_pairs(tmp_path / "pairs_CALFW.txt", tmp_path, n_folds=1, check_files=False)
    assert (
        ps.name == "calfw" and ps.issame.tolist() == [True, False] and ps.folds.tolist() == [0, 0]
    )
    for text, err in [
        ("A_1.jpg 1\nA_2.jpg 0\n", r"pairs_CALFW\.txt:2: label 0 disagrees"),
        ("A_1.jpg 1\nA_2.jpg\n", r"pairs_CALFW\.txt:2: expected"),
        ("A_1.jpg 1\nA_2.jpg 1\nB_1.jpg 0\n", "even number"),
    ]:
        (tmp_path / "pairs_CALFW.txt").write_text(text)
        with pytest.raises(ValueError, match=err):
            read_xlfw_pairs(tmp_path / "pairs_CALFW.txt", tmp_path, check_files=False)


@pytest.mark.parametrize("protocol", ["FF", "FP"])
def test_cfp_real_mini(protocol):
    root = shared_path("cfp-mini")
    ps = read_cfp_pairs(root, protocol)  # also checks all referenced files exist
    assert ps.name == f"cfp_{protocol.lower()}" and len(ps) == 1400 and ps.n_folds == 2
    for f in range(2):
        assert ps.issame[ps.folds == f].tolist() == [True] * 350 + [False] * 350
    first, second = ps.images[ps.pairs[0, 0]], ps.images[ps.pairs[0, 1]]
    assert "/frontal/" in first and ("/profile/" if protocol == "FP" else "/frontal/") in second
    ff, fp = read_cfp_pairs(root, "FF"), read_cfp_pairs(root, "FP")
    assert len(set(ff.images) | set(fp.images)) == 1379  # the data README's image count


def test_cfp_malformed_split_line(tmp_path):
    split = tmp_path / "Protocol" / "Split" / "FF" / "01"
    split.mkdir(parents=True)
    (tmp_path / "Protocol" / "Pair_list_F.txt").write_text("1 ../a.jpg\n2 ../b.jpg\n")
    (split / "same.txt").write_text("1,2\n")
    (split / "diff.txt").write_text("1,2\n2;1\n")
    with pytest.raises(ValueError, match=r"diff\.txt:2: expected 'i,j'"):
        read_cfp_pairs(tmp_path, "FF")
    (split / "diff.txt").write_text("1,3\n")
    with pytest.raises(ValueError, match=r"diff\.txt:1: index \(1,3\)"):
        read_cfp_pairs(tmp_path, "FF")


# ---------------------------------------------------------------- building .bin
def _centre_face(image):
    """A fake detection: the template placed in the centred half-size square."""
    return Detection(np.zeros(4), 1.0, centre_landmarks(image.shape, 0.5))


def test_centre_crop_maps_the_centred_square():
    m = estimate_norm(centre_landmarks((200, 300, 3), 0.5))
    # centred square of side 100 in a 300x200 image: x 100..200, y 50..150
    np.testing.assert_allclose(m @ [100, 50, 1], [0, 0], atol=1e-9)
    np.testing.assert_allclose(m @ [200, 150, 1], [112, 112], atol=1e-9)


class _EdgeShyDetector:
    """Finds the centred face in even-numbered calls' images and in any padded (>160 px)
    image: the odd 160 px images are 'tight crops' that need the second, padded look."""

    def detect(self, images):
        return [
            [_centre_face(im)] if im.shape[0] > 160 or k % 2 == 0 else []
            for k, im in enumerate(images)
        ]


def test_build_bin_with_context_fallback_and_fold_major(tmp_path):
    images = _images(4, 160)
    paths = [str(tmp_path / f"{i}.png") for i in range(4)]
    for path, im in zip(paths, images, strict=True):
        cv2.imwrite(path, cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    ps = PairSet(paths, [[0, 1], [2, 3], [0, 3]], [True, False, False], [1, 0, 0], "t")
    det = _EdgeShyDetector()
    report = build_bin(ps, tmp_path / "t.bin", detector=det, batch_size=4, context_looks=())
    assert report.no_face == [paths[1], paths[3]] and report.n_pairs == 3
    out = read_bin(tmp_path / "t.bin")
    assert out.issame.tolist() == [False, False, True]  # fold 0 pairs first
    assert all(decode_image(b).shape == (112, 112, 3) for b in out.images)
    # order 2,3 | 0,3 | 0,1: each image encoded once and reused
    assert out.images[1] == out.images[3] and out.images[2] == out.images[4]
    # the second look on the edge-padded photo (0.4 x 160 = 64 px a side) finds image 1;
    # landmarks come back to the photo's own pixels and the crop is cut from the photo
    looks = (("replicate", 0.4),)
    report = build_bin(ps, tmp_path / "r.bin", detector=det, batch_size=4, context_looks=looks)
    assert report.no_face == [] and report.context == [paths[1], paths[3]]
    want_crop = norm_crop(images[1], centre_landmarks((288, 288), 0.5) - 64)
    want = cv2.imdecode(np.frombuffer(encode_image(want_crop), np.uint8), 1)
    got = read_bin(tmp_path / "r.bin").images[5]
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(got, np.uint8), 1), want)


def test_build_bin_real_lfw_with_mtcnn(tmp_path):
    root = shared_path("lfw-mini")
    full = read_lfw_pairs(root / "pairs.txt", root / "images")
    pick = [0, 1, 300]  # two matched pairs, one mismatched
    ps = PairSet(full.images, full.pairs[pick], full.issame[pick], full.folds[pick], "lfw6")
    used = sorted(set(ps.pairs.ravel().tolist()))
    remap = {old: new for new, old in enumerate(used)}
    ps = PairSet(
        [full.images[i] for i in used], np.vectorize(remap.get)(ps.pairs), ps.issame, ps.folds
    )
    report = build_bin(ps, tmp_path / "lfw6.bin")
    assert report.no_face == [] and report.n_images == len(used) == 6
    out = read_bin(tmp_path / "lfw6.bin")
    assert len(out.images) == 6 and out.issame.tolist() == [True, True, False]
    for b in out.images:
        img = decode_image(b)
        assert img.shape == (112, 112, 3) and img.std() > 20  # a real, non-blank crop


def test_pair_list_script_builds_a_bin_from_raw_photos(tmp_path, capsys):
    from facekd.data.packing import pair_list_script
    from facekd.data.pairlists import read_lfw_pairs

    images = shared_path("lfw-mini", "images")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t1\nAbdullah_Gul\t1\t6\nAbdullah_Gul\t1\tAbdul_Rahman\t1\n")
    argv = ["--pairs", str(pairs), "--images", str(images), "--out", str(tmp_path / "t.bin")]
    report = pair_list_script("doc", "x.bin", "pairs", read_lfw_pairs, argv)
    assert (report.n_pairs, report.n_images, report.no_face) == (2, 3, [])
    back = read_bin(tmp_path / "t.bin")
    assert back.issame.tolist() == [True, False] and "2 pairs" in capsys.readouterr().out
