"""`data_prep/training_set.py`: aligned tree -> InsightFace train.rec/.idx/property/class map."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from facekd.data.align_tree import AlignReport
from facekd.data.folder import ImageFolderDataset, load_class_map
from facekd.data.recordio import RecordIODataset, unpack_record
from facekd.data.synthetic import SyntheticFaces
from facekd.data.transforms import read_rgb

SCRIPT = Path(__file__).resolve().parents[1] / "data_prep" / "training_set.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("data_prep_training_set", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tree(tmp_path):
    # identity folders 00000..00003 of 3 PNG crops each (plus landmarks.csv, not an image)
    return SyntheticFaces(4, 3, size=32, seed=1).write_folder(tmp_path / "aligned", progress=False)


def _images(ds: RecordIODataset) -> list[np.ndarray]:
    return [read_rgb(unpack_record(ds.reader.read(int(k)))[1]) for k in ds.keys]


def test_asis_is_pixel_identical_and_labels_follow_the_class_map(script, tree, tmp_path):
    out = tmp_path / "rec"
    script.main(["--aligned", "--dst", str(tree), "--rec", str(out), "--store", "asis"])
    ds = RecordIODataset(out)
    ref = ImageFolderDataset(tree)
    assert len(ds) == len(ref) == 12
    assert ds.num_classes == ref.num_classes == 4
    assert ds.image_size == (32, 32) and ds.header_range == (13, 17)
    np.testing.assert_array_equal(ds.labels, ref.labels)
    assert load_class_map(out / "class_map.json") == ref.class_to_label
    for got, (path, _) in zip(_images(ds), ref.samples, strict=True):
        np.testing.assert_array_equal(got, read_rgb(str(path)))
    item = ds[5]
    assert item["label"] == 1 and item["index"] == 5


def test_jpg_store_min_images_nested_crops_and_verbatim_jpeg(script, tree, tmp_path, capsys):
    for name in ("0001.png", "0002.png"):  # identity 00001 keeps one crop: skipped
        (tree / "00001" / name).unlink()
    nested = tree / "00002" / "album"  # any depth below the identity folder
    nested.mkdir()
    shutil.copy(tree / "00002" / "0000.png", nested / "x.png")
    bgr = cv2.imread(str(tree / "00003" / "0000.png"))
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    (tree / "00003" / "9999.jpg").write_bytes(jpeg)
    shutil.copy(tree / "00000" / "0000.png", tree / "stray.png")  # no identity folder
    out = tmp_path / "rec"
    script.main(["--aligned", "--dst", str(tree), "--rec", str(out), "--min-images", "2"])
    log = capsys.readouterr().out
    assert "skipped identity 00001" in log and "stray.png" in log

    ds = RecordIODataset(out)
    assert json.loads((out / "class_map.json").read_text()) == {
        "00000": 0,
        "00002": 1,
        "00003": 2,
    }
    assert ds.num_classes == 3 and len(ds) == 3 + 4 + 4
    np.testing.assert_array_equal(ds.labels, [0] * 3 + [1] * 4 + [2] * 4)
    payloads = [unpack_record(ds.reader.read(int(k)))[1] for k in ds.keys]
    assert all(p.startswith(b"\xff\xd8\xff") for p in payloads)  # PNG crops re-encoded
    assert payloads[-1] == jpeg  # a JPEG crop is stored byte for byte
    sources = (
        [tree / "00000" / f"000{i}.png" for i in range(3)]
        + [tree / "00002" / f"000{i}.png" for i in range(3)]
        + [nested / "x.png"]
        + [tree / "00003" / f"000{i}.png" for i in range(3)]
    )
    for got, path in zip(_images(ds)[:-1], sources, strict=True):
        # exactly the JPEG-95 round trip of the crop (close to it: the noisy 32 px synthetic
        # faces lose a few grey levels on average)
        ref = cv2.imencode(".jpg", cv2.imread(str(path)), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
        np.testing.assert_array_equal(got, read_rgb(ref.tobytes()))
        assert np.abs(got.astype(int) - read_rgb(str(path)).astype(int)).mean() < 10


def test_align_step_is_called_and_summarised(script, tree, tmp_path, monkeypatch, capsys):
    calls = {}

    def fake_align_tree(src, dst, **kw):
        calls.update(kw, src=src, dst=dst)
        Path(dst).mkdir(parents=True, exist_ok=True)
        shutil.copytree(tree / "00000", Path(dst) / "alice")
        return AlignReport(written=3, failed={"bob/1.jpg": "no_face: MTCNN found none"})

    monkeypatch.setattr(script, "align_tree", fake_align_tree)
    dst, out = tmp_path / "dst", tmp_path / "rec"
    script.main(["--src", "raw", "--dst", str(dst), "--rec", str(out), "--format", "jpg"])
    assert calls["src"] == "raw" and calls["fmt"] == "jpg" and calls["size"] == 112
    log = capsys.readouterr().out
    assert "aligned 3" in log and "no_face: 1" in log
    assert RecordIODataset(out).num_classes == 1


def test_src_and_aligned_are_exclusive(script, tree):
    with pytest.raises(SystemExit):
        script.main(["--aligned", "--src", "raw", "--dst", str(tree)])
    with pytest.raises(SystemExit):
        script.main(["--dst", str(tree)])
