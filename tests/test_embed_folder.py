"""`facekd embed`: every good image once, failures with reasons, resume without redoing work,
settings that do not mix, the ONNX backend, raw photos through MTCNN."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import facekd.deploy.embed_folder as ef
from facekd.cli import main
from facekd.data.synthetic import SyntheticFaces
from facekd.deploy.embed_folder import embed_folder
from facekd.evaluation.embed import extract_embeddings
from facekd.models.checkpoints import load_backbone, save_backbone
from tests.conftest import shared_path
from tests.test_export import calibrated_tiny


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_backbone(calibrated_tiny(), tmp_path_factory.mktemp("m") / "student.pt")


GOOD = ["a/0.png", "a/1.jpg", "b/c/2.png", "b/3.png", "4.bmp", "5.png", "6.png"]
BAD = {"empty.png": "empty", "garbage.jpg": "unreadable", "wide.png": "not_square"}


@pytest.fixture
def crops_dir(tmp_path):
    src, faces = tmp_path / "crops", SyntheticFaces(len(GOOD), 1, size=32, seed=5)
    for i, name in enumerate(GOOD):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(faces.render(i, 0)[0]).save(src / name, quality=95)
    (src / "empty.png").write_bytes(b"")
    (src / "garbage.jpg").write_bytes(os.urandom(500))
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(src / "wide.png")
    (src / "notes.txt").write_text("not an image")
    return src


def _run(src, ckpt, out, **kw):
    return embed_folder(src, ckpt, out, aligned=True, workers=0, progress=False, **kw)


def test_aligned_folder_every_good_image_once(crops_dir, ckpt, tmp_path):
    out = tmp_path / "emb.npz"
    rep = _run(crops_dir, ckpt, out)
    assert rep.embedded == len(GOOD) and rep.reused == 0
    with np.load(out) as z:
        paths, emb, meta = z["paths"].tolist(), z["embeddings"], json.loads(str(z["meta"]))
    assert paths == sorted(GOOD) and len(set(paths)) == len(paths)
    assert emb.dtype == np.float32 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert meta["flip"] and meta["aligned"] and meta["backend"] == "torch"
    # same numbers as the one embedding path on the decoded crops
    ref = extract_embeddings(
        load_backbone(ckpt), [str(crops_dir / p) for p in paths], progress=False
    )
    assert np.abs(ref - emb).max() < 1e-5
    fails = json.loads((tmp_path / "emb.failed.json").read_text())
    assert {k: v.split(":")[0] for k, v in fails["failed"].items()} == BAD
    assert not (tmp_path / "emb.npz.parts").exists()
    assert main(["embed", str(crops_dir), "--model", str(ckpt), "--out", str(out), "--aligned",
                 "--workers", "0"]) == 0  # fmt: skip


def test_interrupted_run_resumes_without_redoing_work(crops_dir, ckpt, tmp_path, monkeypatch):
    full = tmp_path / "full.npz"
    _run(crops_dir, ckpt, full)
    calls: list[int] = []
    real = ef.extract_embeddings

    def counting(runner, crops, **kw):
        calls.append(len(crops))
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt  # a kill between shards
        return real(runner, crops, **kw)

    monkeypatch.setattr(ef, "extract_embeddings", counting)
    out = tmp_path / "emb.npz"
    fail_after = 2
    with pytest.raises(KeyboardInterrupt):
        _run(crops_dir, ckpt, out, shard_size=2)
    assert len(list((tmp_path / "emb.npz.parts").glob("shard_*.npz"))) == 2
    done_before = sum(calls[:2])
    calls.clear()
    fail_after = None
    rep = _run(crops_dir, ckpt, out, shard_size=2)
    assert rep.reused == done_before and rep.embedded == len(GOOD) - done_before
    assert sum(calls) == len(GOOD) - done_before  # only the rest was embedded
    with np.load(out) as a, np.load(full) as b:
        assert a["paths"].tolist() == b["paths"].tolist()
        assert np.allclose(a["embeddings"], b["embeddings"], atol=1e-5)  # other batching
    calls.clear()
    decoded: list[str] = []
    real_item = ef._Photos.__getitem__
    monkeypatch.setattr(
        ef._Photos, "__getitem__", lambda self, i: decoded.append(i) or real_item(self, i)
    )
    rep = _run(crops_dir, ckpt, out, shard_size=2)  # finished: nothing to do, failures too
    assert (rep.embedded, rep.reused, calls, decoded) == (0, len(GOOD), [], [])
    assert len(rep.failed) == len(BAD)
    Image.open(crops_dir / "5.png").save(crops_dir / "new.png")  # a new image: only it runs
    rep = _run(crops_dir, ckpt, out, shard_size=2)
    assert rep.embedded == 1 and sum(calls) == 1


def test_other_settings_do_not_mix(crops_dir, ckpt, tmp_path):
    out = tmp_path / "emb.npz"
    _run(crops_dir, ckpt, out)
    with pytest.raises(ValueError, match="flip"):
        _run(crops_dir, ckpt, out, flip=False)
    rep = _run(crops_dir, ckpt, out, flip=False, overwrite=True)
    assert rep.embedded == len(GOOD)


def test_onnx_backend_matches_torch(crops_dir, ckpt, tmp_path):
    from facekd.deploy.export import _write_onnx

    onnx_path = tmp_path / "s.onnx"
    _write_onnx(load_backbone(ckpt), onnx_path, 17, dynamo=False)
    _run(crops_dir, ckpt, tmp_path / "t.npz")
    _run(crops_dir, str(onnx_path), tmp_path / "o.npz")
    with np.load(tmp_path / "t.npz") as t, np.load(tmp_path / "o.npz") as o:
        assert t["paths"].tolist() == o["paths"].tolist()
        assert (t["embeddings"] * o["embeddings"]).sum(1).min() > 0.9999
    with pytest.raises(ValueError, match="onnx"):
        _run(crops_dir, ckpt, tmp_path / "x.npz", backend="onnx")


def test_raw_photos_real_lfw(tmp_path, ckpt):
    root = shared_path("lfw-mini", "images")
    src = tmp_path / "raw"
    names = ["Abdullah_Gul/Abdullah_Gul_0001.jpg", "Abdullah_Gul/Abdullah_Gul_0006.jpg",
             "Adrien_Brody/Adrien_Brody_0002.jpg"]  # fmt: skip
    for n in names:
        (src / n).parent.mkdir(parents=True, exist_ok=True)
        (src / n).write_bytes((root / n).read_bytes())
    noise = np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8)
    cv2.imwrite(str(src / "noise.png"), cv2.GaussianBlur(noise, (9, 9), 3))
    (src / "empty.jpg").write_bytes(b"")
    rep = embed_folder(src, ckpt, tmp_path / "e.npz", workers=0, progress=False)
    assert rep.embedded == 3
    assert {k: v.split(":")[0] for k, v in rep.failed.items()} == {
        "noise.png": "no_face",
        "empty.jpg": "empty",
    }
    with np.load(tmp_path / "e.npz") as z:
        assert z["paths"].tolist() == sorted(names) and z["embeddings"].shape == (3, 128)
