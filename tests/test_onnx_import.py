"""ONNX MobileFaceNets -> facekd backbones: facekd's own exports (no shared data needed), the
exact BatchNorm re-split, refusals naming the node, training / export / teacher / KT use, and
the real ESP-DL files on real faces when ../shared/data is there."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from facekd import cli
from facekd.deploy.export import export_onnx
from facekd.models import build_backbone
from facekd.models.checkpoints import CheckpointError, load_backbone, save_backbone
from facekd.models.onnx_import import OnnxImportError, import_onnx
from facekd.teachers import ALL_OUTPUTS, build_teacher, teacher_provides
from tests.conftest import shared_path, sine_state_dict

TINY_MBF = {"width": 0.25, "input_size": 32}
#: Espressif's mbf layout (depthwise stem, fc head) and an mbf_large-like deep stem, tiny
VARIANTS = {
    "fc_head": ("mbf", {**TINY_MBF, "head": "fc", "head_channels": 16, "stem_groups": 32}),
    "deep_stem": ("mbf", {**TINY_MBF, "scale": 4, "blocks": (2, 2, 3, 1), "num_features": 64}),
}


def _tiny(name="mbf", **kwargs) -> nn.Module:
    """Deterministic non-trivial weights: BN statistics and PReLU slopes away from defaults."""
    model = build_backbone(name, **(kwargs or TINY_MBF))
    model.load_state_dict(sine_state_dict(model))
    return model.eval()


def _faces(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _ort(path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _min_cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@pytest.fixture(scope="module")
def own_exports(tmp_path_factory):
    """facekd's tiny mbf exported by both exporters: {exporter: (original, path)}."""
    folder = tmp_path_factory.mktemp("own")
    model = _tiny()
    out = {}
    for dynamo in (True, False):
        path = folder / f"mbf_{'dynamo' if dynamo else 'torchscript'}.onnx"
        info = export_onnx(model, path, dynamo=dynamo)
        out[info["exporter"]] = (model, path)
    assert set(out) == {"dynamo", "torchscript"}, "both exporters must have written a graph"
    return out


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_own_export_imports_exactly(own_exports, exporter):
    original, path = own_exports[exporter]
    model = import_onnx(path)
    assert (model.arch, model.arch_kwargs) == (original.arch, original.arch_kwargs)
    assert model.import_info["parity"]["min_cosine"] >= 0.99999
    for batch in (1, 5):
        x = _faces(batch, seed=batch)
        with torch.no_grad():
            got = model(x).numpy()
            want = original(x).numpy()
        assert _min_cos(got, _ort(path, x)) >= 0.99999
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the folded stem BatchNorm is re-split exactly: gamma 1, mean 0, var 1 - eps, beta = bias
    conv_t, bn_t = original.layers[0].layers[0], original.layers[0].layers[1]
    conv, bn = model.layers[0].layers[0], model.layers[0].layers[1]
    scale = bn_t.weight / torch.sqrt(bn_t.running_var + bn_t.eps)
    torch.testing.assert_close(conv.weight, conv_t.weight * scale.view(-1, 1, 1, 1))
    torch.testing.assert_close(bn.bias, bn_t.bias - bn_t.running_mean * scale)
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    torch.testing.assert_close(bn.running_var + bn.eps, torch.ones_like(bn.running_var))
    torch.testing.assert_close(
        model.layers[0].layers[2].weight, original.layers[0].layers[2].weight
    )


def test_unfolded_batchnorm_is_copied_with_its_statistics(tmp_path):
    """An export that keeps BatchNormalization nodes gives back the very state dict."""
    original = _tiny()
    path = tmp_path / "unfolded.onnx"
    torch.onnx.export(
        original, (_faces(1),), str(path), dynamo=False, do_constant_folding=False,
        training=torch.onnx.TrainingMode.PRESERVE, input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
    )  # fmt: skip
    assert any(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
    model = import_onnx(path)
    assert model.import_info["batchnorm"] == ["explicit"]
    for key, value in original.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_width_depth_and_head_variants(tmp_path, variant):
    name, kwargs = VARIANTS[variant]
    original = _tiny(name, **kwargs)
    path = tmp_path / f"{variant}.onnx"
    export_onnx(original, path, dynamo=False)
    model = import_onnx(path)
    assert model.arch_kwargs == original.arch_kwargs
    x = _faces(3)
    with torch.no_grad():
        assert _min_cos(model(x), _ort(path, x)) >= 0.99999


def test_split_concat_convolution_is_merged(own_exports, tmp_path):
    """ESP-DL writes conv_sep as two half convs + two PReLUs + Concat: the same network."""
    _, path = own_exports["torchscript"]
    proto = onnx.load(str(path))
    g = proto.graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    const = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}
    nodes = list(g.node)
    # conv_sep: the last 1x1 group-1 conv that a PReLU follows
    i = max(
        k
        for k, n in enumerate(nodes[:-1])
        if n.op_type == "Conv" and inits[n.input[1]].shape[2:] == (1, 1)
        and nodes[k + 1].op_type == "PRelu"
    )  # fmt: skip
    conv, prelu = nodes[i], nodes[i + 1]
    w, b = inits[conv.input[1]], inits[conv.input[2]]
    slope = inits[const.get(prelu.input[1], prelu.input[1])]
    half = w.shape[0] // 2
    new_nodes, parts = [], []
    for j, sl in enumerate((slice(0, half), slice(half, None))):
        for nm, arr in (("w", w[sl]), ("b", b[sl]), ("s", slope[sl])):
            g.initializer.append(onnx.numpy_helper.from_array(arr, f"split{j}_{nm}"))
        new_nodes += [
            onnx.helper.make_node("Conv", [conv.input[0], f"split{j}_w", f"split{j}_b"],
                                  [f"split{j}_c"], kernel_shape=[1, 1]),
            onnx.helper.make_node("PRelu", [f"split{j}_c", f"split{j}_s"], [f"split{j}_p"]),
        ]  # fmt: skip
        parts.append(f"split{j}_p")
    new_nodes.append(onnx.helper.make_node("Concat", parts, [prelu.output[0]], axis=1))
    del g.node[:]
    g.node.extend(nodes[:i] + new_nodes + nodes[i + 2 :])
    split = tmp_path / "split.onnx"
    onnx.save(proto, str(split))
    assert sum(n.op_type == "Concat" for n in onnx.load(str(split)).graph.node) == 1
    merged, plain = import_onnx(split), import_onnx(path)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[key], value, msg=key)


def _export_module(module: nn.Module, path, size: int = 32) -> None:
    torch.onnx.export(
        module.eval(), (torch.zeros(1, 3, size, size),), str(path), dynamo=False,
        input_names=["input"], dynamic_axes={"input": {0: "batch"}},
    )  # fmt: skip


def _first_node(path, op: str) -> str:
    return next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == op)


def test_iresnet_is_refused_naming_its_stem(tmp_path):
    path = tmp_path / "iresnet.onnx"
    _export_module(_tiny("iresnet18", width=0.125, input_size=32), path)
    with pytest.raises(OnnxImportError, match="does not fit") as err:
        import_onnx(path)
    assert repr(_first_node(path, "Conv")) in str(err.value)
    assert "stride-2" in str(err.value)


def test_other_graph_is_refused_naming_the_node(tmp_path):
    path = tmp_path / "relu_net.onnx"
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 256, 4))
    _export_module(net, path)
    with pytest.raises(OnnxImportError, match="PReLU after the stem") as err:
        import_onnx(path)
    assert repr(_first_node(path, "Relu")) in str(err.value)


class _Normalising(nn.Module):
    """A graph that takes 0-255 pixels and normalises itself (Sub, Div in front of the stem)."""

    def __init__(self, backbone: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.backbone, self.mean, self.std = backbone, mean, std

    def forward(self, pixels):
        return self.backbone((pixels - self.mean) / self.std)


def test_input_normalisation_in_graph_is_recorded_and_folded(tmp_path):
    original = _tiny()
    path = tmp_path / "pixels.onnx"
    _export_module(_Normalising(original, 127.5, 128.0), path)
    model = import_onnx(path)  # verify=True: onnxruntime fed raw pixels
    info = model.import_info["input"]
    assert info["in_graph"] and info["mean"] == [127.5] * 3 and info["std"] == [128.0] * 3
    x = _faces(4)
    with torch.no_grad():
        want = original(x * 127.5 / 128.0)
        assert _min_cos(model(x), want) >= 0.99999
    bad = tmp_path / "mean100.onnx"
    _export_module(_Normalising(original, 100.0, 127.5), bad)
    with pytest.raises(OnnxImportError, match="cannot be folded"):
        import_onnx(bad)


def test_bgr_graph_swaps_the_stem_channels(own_exports):
    _, path = own_exports["torchscript"]
    rgb, bgr = import_onnx(path), import_onnx(path, channels="bgr")
    assert bgr.import_info["input"]["channels"] == "bgr"
    w_rgb, w_bgr = rgb.layers[0].layers[0].weight, bgr.layers[0].layers[0].weight
    assert torch.equal(w_bgr, w_rgb.flip(1))


def test_imported_backbone_trains_saves_and_exports(own_exports, tmp_path):
    _, path = own_exports["dynamo"]
    model = load_backbone(path)  # the public entry point
    model.train()
    bn = model.layers[3].layers[0].layers[0].layers[1]
    before_stats = bn.running_mean.clone()
    x = _faces(8, seed=3)
    with torch.no_grad():
        before = model.eval()(x).clone()
    model.train()
    target = torch.nn.functional.normalize(torch.randn(8, model.num_features), dim=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        emb = torch.nn.functional.normalize(model(x), dim=1)
        loss = (1 - (emb * target).sum(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(bn.running_mean, before_stats), "BN statistics update in train mode"
    with torch.no_grad():
        after = model.eval()(x)
    assert (after - before).abs().max() > 1e-3, "a short fine-tune moves the embedding"
    pt = tmp_path / "finetuned.pt"
    save_backbone(model, pt)
    again = load_backbone(pt)
    assert again.import_info["file"] == path.name
    out = tmp_path / "roundtrip.onnx"
    assert cli.main(["export", str(pt), "--onnx", str(out), "--no-dynamo"]) == 0
    back = import_onnx(out)
    with torch.no_grad():
        assert _min_cos(back(x), after) >= 0.99999


def test_cli_import_onnx(own_exports, tmp_path, capsys):
    _, path = own_exports["torchscript"]
    out = tmp_path / "model.pt"
    assert cli.main(["import-onnx", str(path), "--out", str(out)]) == 0
    assert "min cosine" in capsys.readouterr().out
    assert load_backbone(out).arch == "mbf"
    assert load_backbone(path, input_size=32).input_size == 32
    with pytest.raises(CheckpointError, match="student.init: kt"):
        load_backbone(path, input_size=16)
    bad = tmp_path / "iresnet.onnx"
    _export_module(_tiny("iresnet18", width=0.125, input_size=32), bad)
    assert cli.main(["import-onnx", str(bad), "--out", str(tmp_path / "x.pt")]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_white_box_teacher_and_kt_student(tmp_path):
    """``teacher: {model: x.onnx}`` has stages and pooled; ``student.init: kt`` at 16 px."""
    from facekd.config import ExperimentConfig, load_config
    from facekd.engine.builder import build_trainer
    from facekd.models.transfer import build_kt_student

    name, kwargs = VARIANTS["fc_head"]
    path = tmp_path / "teacher.onnx"
    export_onnx(_tiny(name, **kwargs), path, dynamo=False)
    spec = load_config(ExperimentConfig, None, [f"teacher.model={path}"]).teacher
    teacher = build_teacher(spec)
    assert teacher_provides(teacher) == ALL_OUTPUTS
    out = teacher.forward_features(_faces(2))
    assert len(out.stages) == 4 and out.pooled.shape == (2, 128)
    for fc in ("reinit", "resize"):
        student, report = build_kt_student(teacher, input_size=16, fc=fc)
        assert student.features.fc.weight.shape == (teacher.num_features, 16)  # 16 ch x 1 x 1
        assert (report.reinitialised or report.resized) == ["features.fc.weight"]
        assert torch.equal(student.layers[0].layers[0].weight, teacher.layers[0].layers[0].weight)
    cfg = load_config(
        ExperimentConfig,
        None,
        [
            "data.identities=4", "data.images_per_identity=2", "data.image_size=32",
            "data.batch_size=4", "data.workers=0", "train.steps=1", "train.progress=false",
            f"out_dir={tmp_path / 's'}", "student.init=kt", "data.student_size=16",
            f"teacher.model={path}", "losses=[{name: pooling_transfer}]",
            "data.augment={flip_p: 0.0}",
        ],
    )  # fmt: skip
    distiller = build_trainer(cfg).distiller
    assert distiller.student.input_size == 16
    assert torch.equal(
        distiller.student.conv_sep.layers[0].weight, teacher.conv_sep.layers[0].weight
    )


def _real_faces(n: int) -> torch.Tensor:
    """``n`` LFW-mini photos, centre-cropped to the face and resized to 112 (not aligned)."""
    import cv2

    root = shared_path("lfw-mini", "images")
    files = sorted(root.glob("*/*.jpg"))[:n]
    crops = []
    for f in files:
        img = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)[60:190, 65:185]
        crops.append(cv2.resize(img, (112, 112), interpolation=cv2.INTER_AREA))
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0  # (n, 3, 112, 112) RGB in [-1, 1]


@pytest.mark.parametrize("name", ["mbf", "mfn"])
def test_real_espdl_models_match_onnxruntime_on_real_faces(name):
    path = shared_path("espdl-mobilefacenets", f"{name}.onnx")
    model = load_backbone(path)
    expected = {"mbf": ("mbf", {"head": "fc", "stem_groups": 128}),
                "mfn": ("mobilefacenet", {"num_features": 512})}  # fmt: skip
    assert (model.arch, model.arch_kwargs) == expected[name]
    params = sum(t.numel() for t in model.parameters())
    bn_extra = sum(
        m.num_features for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )
    assert params - bn_extra == {"mbf": 3_397_248, "mfn": 1_190_336}[name]  # the README's count
    x = _real_faces(12)
    want = _ort(path, x)
    with torch.no_grad():
        assert _min_cos(model(x[:1]), want[:1]) >= 0.99999
        assert _min_cos(model(x), want) >= 0.99999
    assert math.isclose(model.import_info["input"]["std"][0], 127.5)
