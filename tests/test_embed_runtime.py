"""The tuned embedding path: channels-last default, bf16 option, runtime tuning at the entries."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import facekd.evaluation.embed as embed_mod
from facekd.deploy.api import FaceModel, load
from facekd.evaluation.embed import (
    extract_embeddings,
    fold_batchnorm,
    inference_copy,
    is_channels_last,
    prefers_channels_last,
)
from facekd.models import build_backbone
from facekd.runtime import cpu as runtime
from tests.conftest import TINY_KWARGS


def _faces(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


class Plain(torch.nn.Module):
    """A user's module without a registry name (``arch``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


@pytest.mark.parametrize("name", ["mobilefacenet", "mbf", "iresnet18"])
def test_channels_last_equals_contiguous(name):
    torch.manual_seed(0)
    model = build_backbone(name, **TINY_KWARGS[name]).eval()
    faces = _faces(6, model.input_size)
    ref = extract_embeddings(model, faces, batch_size=4, channels_last=False, progress=False)
    fast = extract_embeddings(model, faces, batch_size=4, channels_last=True, progress=False)
    np.testing.assert_allclose(fast, ref, atol=2e-5)
    assert (fast * ref).sum(1).min() >= 0.9999


@pytest.mark.parametrize(
    ("name", "expected"),
    [("mobilefacenet", True), ("mbf", True), ("iresnet18", False), ("iresnet50", False)],
)
def test_default_layout_per_architecture(name, expected):
    model = build_backbone(name, **TINY_KWARGS[name])
    assert prefers_channels_last(model, "cpu") is expected  # as measured (bench_cpu_speed)
    assert not prefers_channels_last(model, "cuda")  # measured on CPU only


def test_default_layout_of_unknown_modules():
    assert not prefers_channels_last(Plain())


def test_default_path_uses_channels_last_and_leaves_the_callers_module(monkeypatch):
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet", **TINY_KWARGS["mobilefacenet"]).train()
    assert prefers_channels_last(model)
    seen = []
    real = torch.Tensor.contiguous

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("memory_format", args[0] if args else None))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "contiguous", spy)
    extract_embeddings(model, _faces(3, model.input_size), progress=False)
    assert torch.channels_last in seen  # the batch went in channels-last
    assert model.training and not is_channels_last(model)  # the caller's module untouched


def test_no_copy_of_an_inference_module(monkeypatch):
    model = build_backbone("mobilefacenet", **TINY_KWARGS["mobilefacenet"]).eval()
    model = fold_batchnorm(model).to(memory_format=torch.channels_last)
    copies = []
    monkeypatch.setattr(embed_mod.copy, "deepcopy", lambda m: copies.append(m) or copy.copy(m))
    extract_embeddings(model, _faces(2, model.input_size), progress=False)
    assert copies == []
    model = build_backbone("mobilefacenet", **TINY_KWARGS["mobilefacenet"]).eval()
    extract_embeddings(model.to(memory_format=torch.channels_last), _faces(1, 32), progress=False)
    assert len(copies) == 1  # channels-last but BN not folded yet: copied


def _randomise_bn(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize("name", ["mobilefacenet", "iresnet18"])
def test_inference_copy_folds_bn_and_keeps_outputs(name):
    torch.manual_seed(0)
    model = build_backbone(name, **TINY_KWARGS[name]).train()
    _randomise_bn(model)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    net = inference_copy(model, channels_last=True)
    left = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert left < n_bn and not embed_mod._conv_bn_pairs(net)
    assert model.training and sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(3, 3, model.input_size, model.input_size) * 2 - 1
    with torch.no_grad():
        ref = model.eval()(x)
        out = net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_fold_batchnorm_without_affine_or_conv_bias():
    torch.manual_seed(0)
    for bias, affine in ((True, False), (False, True)):
        seq = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, bias=bias), torch.nn.BatchNorm2d(4, affine=affine)
        )
        seq[1].running_mean.uniform_(-1, 1)
        seq[1].running_var.uniform_(0.5, 2)
        seq.eval()
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            ref = seq(x)
            folded = fold_batchnorm(copy.deepcopy(seq))
            torch.testing.assert_close(folded(x), ref, atol=1e-5, rtol=1e-5)
        assert isinstance(folded[1], torch.nn.Identity)


def test_bf16_is_explicit_and_close():
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet", **TINY_KWARGS["mobilefacenet"]).eval()
    faces = _faces(4, model.input_size)
    ref = extract_embeddings(model, faces, progress=False)
    assert np.array_equal(ref, extract_embeddings(model, faces, bf16=False, progress=False))
    low = extract_embeddings(model, faces, bf16=True, progress=False)
    assert not np.array_equal(low, ref)  # it really ran in bf16
    assert (low * ref).sum(1).min() > 0.98


def test_extract_embeddings_tunes_the_runtime(monkeypatch):
    calls = []
    monkeypatch.setattr(embed_mod, "tune_cpu", lambda: calls.append(1))
    model = build_backbone("mobilefacenet", **TINY_KWARGS["mobilefacenet"])
    extract_embeddings(model, _faces(1, model.input_size), progress=False)
    assert calls == [1]


def test_api_load_tunes_and_stores_its_own_copy_channels_last(monkeypatch, tmp_path):
    from facekd.models.checkpoints import save_backbone

    calls = []
    monkeypatch.setattr("facekd.deploy.api.tune_cpu", lambda: calls.append(1))
    model = build_backbone("mobilefacenet", **TINY_KWARGS["mobilefacenet"]).eval()
    save_backbone(model, tmp_path / "m.pt")
    fm = load(tmp_path / "m.pt", bf16=True)
    assert calls and is_channels_last(fm.runner) and fm.bf16
    assert not embed_mod._conv_bn_pairs(fm.runner)  # BN folded once, at load
    faces = _faces(2, model.input_size)
    ref = extract_embeddings(model, faces, channels_last=False, progress=False)
    np.testing.assert_allclose(fm.embed(faces, bf16=False), ref, atol=2e-5)
    user = load(model)  # a module passed in is never reformatted
    assert user.runner is model and not is_channels_last(model)
    assert isinstance(user, FaceModel)


def test_cli_main_tunes_once_after_parsing(monkeypatch):
    from facekd.cli import main

    calls = []
    monkeypatch.setattr(runtime, "tune_cpu", lambda: calls.append(1))
    assert main(["profile", "--no-such-flag"]) == 2  # argparse error: nothing tuned
    assert calls == []
    assert main(["verify", "missing1.jpg", "missing2.jpg", "--model", "mobilefacenet"]) == 2
    assert calls == [1]


def test_cli_bf16_flags_parse():
    from facekd.cli import build_parser

    p = build_parser()
    args = p.parse_args(["verify", "a.jpg", "b.jpg", "--model", "m", "--bf16"])
    assert args.bf16
    assert p.parse_args(["embed", "src", "--model", "m", "--out", "o.npz", "--bf16"]).bf16


class _Recording(list):
    """Crops that record torch's thread count whenever one is read."""

    seen: list[int]

    def __getitem__(self, i):
        self.seen.append(torch.get_num_threads())
        return super().__getitem__(i)


class _ThreadProbe(Plain):
    def forward(self, x):
        self.seen.append(torch.get_num_threads())
        return super().forward(x)


def test_preprocessing_single_threaded_forward_not(monkeypatch):
    monkeypatch.setattr(embed_mod, "tune_cpu", lambda: None)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        crops = _Recording(_faces(3, 16))
        crops.seen = []
        model = _ThreadProbe()
        model.seen = []
        extract_embeddings(model, crops, batch_size=2, progress=False)
        assert crops.seen and set(crops.seen) == {1}
        assert model.seen and set(model.seen) == {2}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_profile_measures_on_the_tuned_runtime(monkeypatch):
    from facekd.evaluation import profile

    calls = []
    monkeypatch.setattr(
        profile, "tune_cpu", lambda: calls.append(1) or runtime.RuntimeReport(True, "a", "b")
    )
    tiny = build_backbone("mobilefacenet", **TINY_KWARGS["mobilefacenet"])
    budget = profile.TimingBudget(warmup=1, runs=1, min_runs=1)
    rep = profile.compare(
        tiny, tiny, batch_sizes=(1,), precisions=("fp32",), budget=budget, progress=False
    )
    assert calls == [1]
    assert rep.environment["runtime"] == "facekd CPU tuning: allocator a; torch threads b"
