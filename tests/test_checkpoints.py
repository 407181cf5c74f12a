"""load_backbone / save_backbone: strict loads, insightface layouts, actionable errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from facekd.models import build_backbone
from facekd.models.checkpoints import (
    CheckpointError,
    atomic_save,
    infer_arch,
    load_backbone,
    save_backbone,
    strip_prefixes,
)
from tests.conftest import sine_state_dict

GOLDEN = Path(__file__).parent / "golden"


def _tiny(name="mobilefacenet", **kw):
    model = build_backbone(name, **{"width": 0.25, "input_size": 32, **kw})
    model.load_state_dict(sine_state_dict(model))
    return model.eval()


def _same_outputs(a, b, size=32):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_save_then_load_needs_no_architecture(tmp_path):
    model = _tiny("iresnet18", head="gap")
    loaded = load_backbone(save_backbone(model, tmp_path / "s.pt"))
    assert loaded.arch == "iresnet18" and loaded.arch_kwargs == model.arch_kwargs
    assert not loaded.training
    _same_outputs(model, loaded)


@pytest.mark.parametrize("wrap", ["plain", "module.", "backbone.", "module.backbone.", "nested"])
def test_insightface_state_dicts_load_strictly(tmp_path, wrap):
    model = _tiny("mbf")
    sd = model.state_dict()
    if wrap == "nested":  # arcface_torch training checkpoint layout
        obj = {"epoch": 3, "state_dict_backbone": sd, "state_optimizer": {}}
    elif wrap == "plain":
        obj = sd
    else:
        obj = {wrap + k: v for k, v in sd.items()}
    torch.save(obj, tmp_path / "backbone.pth")
    loaded = load_backbone(tmp_path / "backbone.pth")
    assert loaded.arch == "mbf" and loaded.arch_kwargs["width"] == 0.25
    _same_outputs(model, loaded)


def test_full_size_insightface_r100_layout_is_inferred(tmp_path):
    entries = json.loads((GOLDEN / "insightface_iresnet100_keys.json").read_text())["entries"]
    state = {k: torch.zeros(s) for k, s in entries}
    assert infer_arch(state) == ("iresnet100", {"num_features": 512})
    mbf = json.loads((GOLDEN / "insightface_mbf_keys.json").read_text())["entries"]
    assert infer_arch({k: torch.zeros(s) for k, s in mbf}) == ("mbf", {"num_features": 512})


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("mobilefacenet", {"width": 0.5, "input_size": 56}),
        ("mbf", {"width": 0.25, "num_features": 128}),
        ("iresnet34", {"width": 0.25, "input_size": 56}),
        ("iresnet18", {"width": 0.125, "head": "gap"}),
    ],
)
def test_infer_arch_recovers_variants(name, kwargs):
    model = build_backbone(name, **kwargs)
    arch, inferred = infer_arch(model.state_dict())
    rebuilt = build_backbone(arch, **inferred)
    rebuilt.load_state_dict(model.state_dict(), strict=True)


def test_torchscript_archive_loads(tmp_path):
    model = _tiny()
    traced = torch.jit.trace(model, torch.randn(1, 3, 32, 32))
    traced.save(str(tmp_path / "model.pt"))
    _same_outputs(model, load_backbone(tmp_path / "model.pt"))


def test_wrong_architecture_names_keys_and_shapes(tmp_path):
    torch.save(_tiny("mobilefacenet").state_dict(), tmp_path / "mfn.pth")
    with pytest.raises(CheckpointError) as err:
        load_backbone(tmp_path / "mfn.pth", arch="iresnet18", width=0.25, input_size=32)
    msg = str(err.value)
    assert "missing keys" in msg and "unexpected keys" in msg and "conv1.weight" in msg
    big = build_backbone("mobilefacenet", width=0.5, input_size=32)
    torch.save(big.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"(?s)wrong shapes.*layers\.0\.layers\.0\.weight"):
        load_backbone(tmp_path / "wide.pth", arch="mobilefacenet", width=0.25, input_size=32)


def test_truncated_random_and_foreign_files_fail_clearly(tmp_path):
    save_backbone(_tiny(), tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_backbone(tmp_path / "cut.pt")
    (tmp_path / "noise.pth").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_backbone(tmp_path / "noise.pth")
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "opt.pt")
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_backbone(tmp_path / "opt.pt")
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="cannot infer the architecture"):
        load_backbone(tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="neither a registered backbone"):
        load_backbone(tmp_path / "absent.pth")


def test_strip_prefixes_and_registry_names():
    assert list(strip_prefixes({"module.backbone.fc.weight": 1, "_orig_mod.x": 2})) == [
        "fc.weight",
        "x",
    ]
    assert load_backbone("mobilefacenet", width=0.25).arch == "mobilefacenet"


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    target = atomic_save({"a": torch.ones(1)}, tmp_path / "c.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save({"bad": Unpicklable()}, target)
    assert torch.load(target)["a"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"], "no temporary files left behind"
