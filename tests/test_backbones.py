"""Every registered backbone honours the contract; insightface-compatible names and outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from facekd.models import BACKBONES, build_backbone
from tests.conftest import TINY_KWARGS, sine_state_dict

GOLDEN = Path(__file__).parent / "golden"


def test_every_registered_backbone_has_tiny_settings():
    assert set(TINY_KWARGS) == set(BACKBONES)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_contract_shapes_and_forward_equals_features(name):
    torch.manual_seed(0)
    model = build_backbone(name, **TINY_KWARGS[name]).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_features(x)
        emb = model(x)
    assert emb.shape == (3, model.num_features)
    torch.testing.assert_close(out.embedding, emb)
    # pooled = GAP of the last conv map: iResNet bn2 (= last stage width), MobileFaceNet conv_sep
    last_conv = model.conv_sep.layers[0] if hasattr(model, "conv_sep") else None
    width = last_conv.out_channels if last_conv is not None else out.stages[-1].shape[1]
    assert out.pooled.shape == (3, width)
    assert len(out.stages) >= 4
    sides = [s.shape[-1] for s in out.stages]
    assert sides == sorted(sides, reverse=True), "stages go from the stem to the last stage"
    assert all(s.shape[0] == 3 for s in out.stages)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backward_reaches_every_trainable_parameter(name):
    torch.manual_seed(0)
    model = build_backbone(name, **TINY_KWARGS[name]).train()
    out = model.forward_features(torch.randn(4, 3, 32, 32))
    (out.embedding.square().mean() + out.pooled.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_strict_state_dict_round_trip(name):
    a = build_backbone(name, **TINY_KWARGS[name])
    a.load_state_dict(sine_state_dict(a))
    b = build_backbone(name, **TINY_KWARGS[name])
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("name", ["iresnet50", "mobilefacenet", "mbf"])
@pytest.mark.parametrize("size,last", [(112, 7), (56, 4), (32, 2)])
def test_low_resolution_inputs_size_the_embedding_layer(name, size, last):
    model = build_backbone(name, input_size=size, **({"width": 0.25} if "iresnet" in name else {}))
    with torch.no_grad():
        out = model.eval().forward_features(torch.randn(1, 3, size, size))
    assert out.stages[-1].shape[-1] == last
    with pytest.raises(ValueError, match=f"built for {size}x{size}"):
        model(torch.randn(1, 3, size * 2, size * 2))


def test_mobilefacenet_last_stride_one_keeps_the_112px_shapes_and_only_changes_a_stride():
    full = build_backbone("mobilefacenet", width=0.25, input_size=112)
    ls1 = build_backbone("mobilefacenet", width=0.25, input_size=56, last_stride=1)
    ls2 = build_backbone("mobilefacenet", width=0.25, input_size=56)
    assert {k: v.shape for k, v in ls1.state_dict().items()} == {
        k: v.shape for k, v in full.state_dict().items()
    }
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert ls1.eval().forward_features(x).stages[-1].shape[-2:] == (7, 7)
    # with the same weights, a stride-2 depthwise conv is the stride-1 one sampled at [::2, ::2]
    body = {k: v for k, v in full.state_dict().items() if k.startswith("layers.")}
    ls1.load_state_dict(body, strict=False)
    ls2.load_state_dict(body, strict=False)
    outs = {}
    for name, model in (("ls1", ls1), ("ls2", ls2)):
        dw = model.layers[6].layers[1]
        dw.register_forward_hook(lambda m, i, o, name=name: outs.__setitem__(name, o))
        with torch.no_grad():
            model.eval()(x)
    torch.testing.assert_close(outs["ls1"][..., ::2, ::2], outs["ls2"])
    with pytest.raises(ValueError, match="last_stride must be 1 or 2"):
        build_backbone("mobilefacenet", last_stride=4)


def test_iresnet_gap_head_is_resolution_independent_in_shape():
    a = build_backbone("iresnet18", head="gap", width=0.25)
    b = build_backbone("iresnet18", head="gap", width=0.25, input_size=56)
    assert a.fc.weight.shape == b.fc.weight.shape
    b.load_state_dict(a.state_dict(), strict=True)  # knowledge-transfer initialisation works


@pytest.mark.parametrize("name", ["iresnet100", "mbf"])
def test_names_and_shapes_equal_insightface_entry_by_entry(name):
    golden = json.loads((GOLDEN / f"insightface_{name}_keys.json").read_text())["entries"]
    ours = [[k, list(v.shape)] for k, v in build_backbone(name).state_dict().items()]
    assert ours == golden
    state = {k: torch.zeros(shape) for k, shape in golden}
    build_backbone(name).load_state_dict(state, strict=True)


def test_published_sizes():
    def params(m):
        return sum(p.numel() for p in m.parameters())

    assert len(build_backbone("iresnet100").state_dict()) == 925
    assert round(params(build_backbone("iresnet100")) / 1e6, 2) == 65.16
    r100 = build_backbone("iresnet100")
    assert tuple(r100.fc.weight.shape) == (512, 25088) and r100.fc.bias is not None
    assert not r100.features.weight.requires_grad
    assert round(params(build_backbone("mbf")) / 1e6, 2) == 2.06
    # Chen et al. 2018 report 0.99M; ours counts BN/PReLU parameters too: 1.00M
    assert 0.98e6 < params(build_backbone("mobilefacenet")) < 1.01e6


@pytest.mark.parametrize("name", ["iresnet18", "mbf"])
def test_forward_matches_insightface_reference_outputs(name):
    """Outputs of insightface's own modules under the same deterministic weights and input."""
    golden = json.loads((GOLDEN / "insightface_forward.json").read_text())["outputs"][name]
    model = build_backbone(name)
    model.load_state_dict(sine_state_dict(model))
    x = torch.sin(torch.arange(2 * 3 * 112 * 112, dtype=torch.float64) * 0.01)
    with torch.no_grad():
        emb = model.eval()(x.reshape(2, 3, 112, 112).float())
    torch.testing.assert_close(emb[:, :8], torch.tensor(golden["first8"]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(emb.norm(dim=1), torch.tensor(golden["norm"]), rtol=1e-4, atol=1e-4)


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match="iresnet100"):
        build_backbone("resnet9000")
    with pytest.raises(TypeError, match="mbf"):
        build_backbone("mbf", colour="blue")


def test_mobilefacenet_relu_variant_has_no_slopes_and_refuses_unknown_activations():
    prelu = build_backbone("mobilefacenet", width=0.25, input_size=56)
    relu = build_backbone("mobilefacenet", width=0.25, input_size=56, activation="relu")
    mods = list(relu.modules())
    assert not any(isinstance(m, torch.nn.PReLU) for m in mods)
    n_prelu = sum(isinstance(m, torch.nn.PReLU) for m in prelu.modules())
    assert sum(isinstance(m, torch.nn.ReLU) for m in mods) == n_prelu == 33
    slopes = set(prelu.state_dict()) - set(relu.state_dict())
    assert len(slopes) == 33 and set(relu.state_dict()) < set(prelu.state_dict())
    relu.eval()
    out = relu(torch.randn(2, 3, 56, 56))
    assert out.shape == (2, 128) and relu.arch_kwargs["activation"] == "relu"
    with pytest.raises(ValueError, match="activation must be one of"):
        build_backbone("mobilefacenet", activation="gelu")
