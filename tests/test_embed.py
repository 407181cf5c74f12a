"""Embedding extraction: flip-sum TTA, input forms, resizing / degradation, backends."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch

from facekd.data.transforms import resize, to_tensor
from facekd.data.verification import encode_image
from facekd.evaluation.embed import extract_embeddings, prepare_face
from facekd.models import build_backbone
from facekd.models.checkpoints import save_backbone


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions: intra-op threads only add contention on a busy CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(seed=0):
    """Tiny backbone with BN statistics calibrated on random faces: at initialisation the
    running statistics (0, 1) make the embedding nearly constant, hiding input effects."""
    torch.manual_seed(seed)
    m = build_backbone("mobilefacenet", width=0.25, input_size=32)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.momentum = None  # cumulative average
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(32, 3, 32, 32) * 2 - 1)
    return m.eval()


@pytest.fixture(scope="module")
def model(one_thread):
    return _tiny()


def _crops(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, size // 4, size // 4, 3)).repeat(4, 1).repeat(4, 2)
    noise = rng.integers(-40, 41, (n, size, size, 3))
    return list(np.clip(base + noise, 0, 255).astype(np.uint8))


def _reference(model, crops, size=32):
    """insightface's recipe written out: normalise, f(x) + f(flip x), L2-normalise."""
    x = torch.stack([to_tensor(resize(c, size)) for c in crops])
    with torch.no_grad():
        e = (model(x) + model(x.flip(3))).double().numpy()
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_flip_sum_then_normalise_matches_reference(model):
    crops = _crops(5)
    emb = extract_embeddings(model, crops, batch_size=2, progress=False)
    assert emb.shape == (5, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, _reference(model, crops), atol=1e-6)
    x = torch.stack([to_tensor(c) for c in crops])
    with torch.no_grad():
        raw = (model(x) + model(x.flip(3))).numpy()
    unnorm = extract_embeddings(model, crops, normalize=False, progress=False)
    np.testing.assert_allclose(unnorm, raw, rtol=1e-5, atol=1e-5)
    no_flip = extract_embeddings(model, crops, flip=False, normalize=False, progress=False)
    with torch.no_grad():
        np.testing.assert_allclose(no_flip, model(x).numpy(), rtol=1e-5, atol=1e-5)
    cos = np.sum(no_flip * (unnorm - no_flip), 1) / np.linalg.norm(no_flip, axis=1)
    assert np.all(cos / np.linalg.norm(unnorm - no_flip, axis=1) < 0.99)  # flip matters


def test_input_forms_agree(model, tmp_path):
    crops = _crops(6, seed=1)
    ref = extract_embeddings(model, crops, batch_size=4, progress=False)
    encoded = [encode_image(c, ".png") for c in crops]  # lossless
    paths = []
    for i, c in enumerate(crops):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(c, cv2.COLOR_RGB2BGR))
    tensor = torch.stack([to_tensor(c) for c in crops])
    items = [{"image": t, "label": -1, "index": i} for i, t in enumerate(tensor)]
    for images, workers in [
        (encoded, 2),
        ([str(p) for p in paths], 0),
        (paths, 0),
        (np.stack(crops), 0),
        (tensor, 0),
        (items, 0),
    ]:
        got = extract_embeddings(model, images, batch_size=4, num_workers=workers, progress=False)
        np.testing.assert_allclose(got, ref, atol=1e-6)


def test_batch_size_invariance_and_caller_model_untouched(model):
    crops = _crops(7, seed=2)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = extract_embeddings(model, crops, batch_size=3, progress=False)
    assert model.training  # restored
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN stats kept
    model.eval()
    b = extract_embeddings(model, crops, batch_size=64, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = extract_embeddings(model, crops, channels_last=True, bf16=True, progress=False)
    assert np.all(np.sum(c * b, 1) > 0.99)  # bf16 autocast on CPU: close, not equal
    assert next(model.parameters()).is_contiguous()  # the copy was reformatted, not the model


def test_resize_to_model_size_and_degradation(model):
    crops = _crops(4, size=112, seed=3)
    np.testing.assert_allclose(
        extract_embeddings(model, crops, progress=False), _reference(model, crops), atol=1e-6
    )
    low = extract_embeddings(model, crops, degrade_to=16, progress=False)
    by_hand = [cv2.resize(resize(c, 16), (32, 32), interpolation=cv2.INTER_CUBIC) for c in crops]
    np.testing.assert_allclose(low, _reference(model, by_hand), atol=1e-6)
    assert not np.allclose(low, _reference(model, crops), atol=1e-3)
    assert prepare_face(crops[0], 16, degrade_to=16).shape == (16, 16, 3)
    assert np.array_equal(prepare_face(crops[0], 32, 32), resize(crops[0], 32))


def test_input_size_override_and_checkpoint_path(model, tmp_path):
    crops = _crops(3, size=64, seed=4)
    path = save_backbone(model, tmp_path / "tiny.pt")
    np.testing.assert_allclose(
        extract_embeddings(str(path), crops, progress=False),
        extract_embeddings(model, crops, progress=False),
        atol=1e-6,
    )
    plain = torch.nn.Sequential(model)  # any module with forward(x) -> (B, D), no input_size
    assert plain.training and not model.training
    got = extract_embeddings(plain, crops, input_size=32, progress=False)
    assert plain.training and not model.training  # each submodule's mode restored
    np.testing.assert_allclose(got, _reference(model, crops), atol=1e-6)
    with pytest.raises(ValueError, match="built for 32x32"):  # crops kept at 64: refused
        extract_embeddings(plain, crops, progress=False)


@pytest.mark.parametrize("dynamic", [True, False])
def test_onnx_backend_parity(model, tmp_path, dynamic):
    import onnxruntime as ort

    path = tmp_path / "tiny.onnx"
    axes = {"data": {0: "batch"}, "emb": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():  # tracer / legacy-exporter deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            torch.zeros(2, 3, 32, 32),
            str(path),
            dynamo=False,
            input_names=["data"],
            output_names=["emb"],
            dynamic_axes=axes,
        )
    crops = _crops(5, seed=5)
    ref = extract_embeddings(model, crops, progress=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for backend, bs in [(path, 1), (str(path), 3), (session, 64)]:
        got = extract_embeddings(backend, crops, batch_size=bs, progress=False)
        assert np.all(np.sum(got * ref, axis=1) >= 0.9999), (backend, bs)
    with pytest.raises(ValueError, match="bf16"):
        extract_embeddings(session, crops, bf16=True, progress=False)


def test_errors(model):
    crops = _crops(2)
    model.train()
    with pytest.raises(ValueError, match="tensor faces are used as given"):
        extract_embeddings(model, torch.zeros(2, 3, 48, 48), progress=False)
    assert model.training  # restored after a failure too
    model.eval()
    with pytest.raises(ValueError, match="tensor faces are used as given"):
        extract_embeddings(model, torch.zeros(2, 3, 32, 32), degrade_to=16, progress=False)
    with pytest.raises(ValueError, match="tensor faces are used as given"):
        extract_embeddings(model, torch.zeros(2, 3, 48, 48), progress=False)
    with pytest.raises(ValueError, match="square"):
        extract_embeddings(model, [np.zeros((32, 30, 3), np.uint8)], progress=False)
    with pytest.raises(ValueError, match="cannot decode"):
        extract_embeddings(model, [b"not an image"], progress=False)
    with pytest.raises(ValueError, match="no images"):
        extract_embeddings(model, [], progress=False)
    with pytest.raises(ValueError, match="degrade_to"):
        extract_embeddings(model, crops, degrade_to=2, progress=False)
    with pytest.raises(TypeError, match="model must be"):
        extract_embeddings(object(), crops, progress=False)
