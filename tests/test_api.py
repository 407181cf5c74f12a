"""`facekd.deploy.api`: load + embed + verify on synthetic crops and real photos;
`facekd verify`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facekd.cli import main
from facekd.data.synthetic import SyntheticFaces
from facekd.deploy.api import DEFAULT_THRESHOLD, NoFaceError, load
from facekd.evaluation.embed import extract_embeddings
from facekd.models.checkpoints import save_backbone
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


@pytest.fixture(scope="module")
def faces():
    data = SyntheticFaces(3, 2, size=32, seed=7)
    return [data.render(i // 2, i % 2)[0] for i in range(6)]


def test_embed_accepts_numpy_pil_gray_and_paths(ckpt, faces, tmp_path):
    model = load(ckpt)
    emb = model.embed(faces)  # 32 px squares = the model's input size: taken as aligned
    assert emb.shape == (6, 128) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    ref = extract_embeddings(model.runner, faces, progress=False)
    assert np.abs(ref - emb).max() < 1e-6
    Image.fromarray(faces[0]).save(tmp_path / "f.png")
    forms = [Image.fromarray(faces[0]), str(tmp_path / "f.png"), np.stack(faces)[:1]]
    for form in forms:
        assert np.abs(model.embed(form) - emb[:1]).max() < 1e-5
    rgba = np.dstack([faces[0], np.full((32, 32), 255, np.uint8)])
    assert np.abs(model.embed(rgba) - emb[:1]).max() < 1e-5
    assert model.embed(faces[0][:, :, 0]).shape == (1, 128)  # grayscale
    with pytest.raises(ValueError, match="uint8"):
        model.embed(faces[0].astype(np.float32))


def test_verify_same_image_is_one_and_threshold_is_a_parameter(ckpt, faces):
    model = load(ckpt)
    cos, same = model.verify(faces[0], faces[0])
    assert cos == pytest.approx(1.0, abs=1e-5) and same
    cos2, _ = model.verify(faces[0], faces[4])
    assert cos2 < 0.9999
    assert model.verify(faces[0], faces[4], threshold=cos2 + 1e-3)[1] is False
    assert model.verify(faces[0], faces[4], threshold=cos2 - 1e-3)[1] is True
    assert model.threshold == DEFAULT_THRESHOLD
    assert load(ckpt, threshold=0.9).threshold == 0.9


def test_real_model_on_real_photos(tmp_path, capsys):
    legacy = shared_path("insightface-mobilefacenet-legacy")
    root = shared_path("lfw-mini", "images")
    gul1, gul2 = (root / "Abdullah_Gul" / f"Abdullah_Gul_{i:04d}.jpg" for i in (1, 6))
    brody = root / "Adrien_Brody" / "Adrien_Brody_0002.jpg"
    model = load(legacy)
    same_cos, same = model.verify(str(gul1), str(gul2))  # 250x250 photos: detected + aligned
    diff_cos, diff = model.verify(str(gul1), str(brody))
    assert same_cos > diff_cos + 0.2 and same and not diff
    self_cos, _ = model.verify(np.asarray(Image.open(gul1)), str(gul1))
    assert self_cos == pytest.approx(1.0, abs=1e-4)
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="image 1"):
        model.embed([str(gul1), noise])
    assert main(["verify", str(gul1), str(gul2), "--model", str(legacy)]) == 0
    assert "same person" in capsys.readouterr().out
    assert main(["verify", str(gul1), str(brody), "--model", str(legacy)]) == 0
    assert "different people" in capsys.readouterr().out
    assert main(["verify", str(gul1), str(tmp_path / "none.jpg"), "--model", str(legacy)]) == 2
