"""Bring-your-own teachers: ONNX files (black box), ensembles, heads fitted on embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facekd.config import ExperimentConfig, from_dict
from facekd.data.synthetic import SyntheticFaces
from facekd.engine.builder import build_dataset, build_distiller
from facekd.engine.distiller import Distiller
from facekd.losses import build_loss
from facekd.models import build_backbone, build_head
from facekd.models.checkpoints import save_backbone
from facekd.teachers import (
    OnnxTeacher,
    OnnxTeacherError,
    TeacherEnsemble,
    average_probabilities_as_logits,
)
from facekd.teachers.cache import build_teacher_cache
from facekd.teachers.fitted_head import fit_teacher_head

SIZE = 32


def _backbone(seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    kw = {"width": 0.25, "input_size": SIZE, "num_features": 32, **kw}
    return build_backbone("mobilefacenet", **kw).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny MobileFaceNet, its facekd checkpoint and its facekd ONNX export."""
    from facekd.deploy.export import export_onnx

    root = tmp_path_factory.mktemp("onnx_teacher")
    model = _backbone(0)
    save_backbone(model, root / "teacher.pt")
    export_onnx(model, root / "teacher.onnx")
    return model, root / "teacher.pt", root / "teacher.onnx"


def _faces(n=6, seed=1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=1)


def test_onnx_teacher_reads_facekd_metadata_and_matches_torch(exported):
    model, _, onnx_path = exported
    teacher = OnnxTeacher(onnx_path)
    assert teacher.input_size == SIZE and teacher.layout == "nchw" and teacher.channels == "rgb"
    assert teacher.mean.ravel().tolist() == [127.5] * 3  # from the graph's facekd metadata
    x = _faces()
    with torch.no_grad():
        expected = model.forward_features(x).embedding
    got = teacher.forward_features(x)
    assert got.stages == [] and got.pooled is None
    assert _cosines(got.embedding, expected).min() >= 0.9999


def test_onnx_teacher_cache_equals_the_torch_teachers(exported, tmp_path):
    """The issue's check: same teacher cache from the ONNX file as from the torch model."""
    _, ckpt, onnx_path = exported
    caches = {}
    for kind, spec in (("torch", {"model": str(ckpt)}), ("onnx", {"onnx": str(onnx_path)})):
        cfg = from_dict(
            ExperimentConfig,
            {
                "out_dir": str(tmp_path / kind),
                "student": {"kwargs": {"width": 0.25, "num_features": 32}},
                "teacher": {**spec, "cache": str(tmp_path / f"cache_{kind}"),
                            "cache_dtype": "float32"},
                "losses": [{"name": "embedding"}],
                "data": {"identities": 3, "images_per_identity": 3, "image_size": SIZE,
                         "augment": {"flip_p": 0.0}, "workers": 0},
            },
        )  # fmt: skip
        caches[kind] = build_distiller(cfg, build_dataset(cfg, None)).teacher_cache
    a, b = (torch.from_numpy(np.array(caches[k].arrays["embedding"])) for k in ("torch", "onnx"))
    assert a.shape == b.shape == (9, 32)
    assert _cosines(a, b).min() >= 0.9999
    # one fingerprint per teacher: the ONNX cache is not mistaken for the torch one
    assert caches["torch"].meta["key"]["teacher"] != caches["onnx"].meta["key"]["teacher"]


def _hand_graph(path, layout="nhwc", normalise_in_graph=True, size=8):
    """``embedding = mean_hw((x - 127.5) * 0.0078125)`` per channel, written by hand."""
    import onnx
    from onnx import TensorProto, helper

    shape = ["N", size, size, 3] if layout == "nhwc" else ["N", 3, size, size]
    axes = [1, 2] if layout == "nhwc" else [2, 3]
    nodes, src = [], "pixels"
    inits = [helper.make_tensor("axes", TensorProto.INT64, [2], axes)]
    if normalise_in_graph:
        inits += [
            helper.make_tensor("m", TensorProto.FLOAT, [], [127.5]),
            helper.make_tensor("s", TensorProto.FLOAT, [], [0.0078125]),
        ]
        nodes += [helper.make_node("Sub", ["pixels", "m"], ["c"]),
                  helper.make_node("Mul", ["c", "s"], ["n"])]  # fmt: skip
        src = "n"
    nodes.append(helper.make_node("ReduceMean", [src, "axes"], ["feat"], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def test_onnx_input_contract_layout_channels_and_in_graph_normalisation(tmp_path):
    """InsightFace's rule (Sub + Mul up front: feed raw pixels), NHWC and BGR, checked
    against the same arithmetic done here in numpy."""
    path = _hand_graph(tmp_path / "hand.onnx")
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    pixels = (x.numpy() + 1) * 127.5  # what the faces were before facekd normalised them
    for channels in ("rgb", "bgr"):
        teacher = OnnxTeacher(path, channels=channels)
        assert teacher.layout == "nhwc" and teacher.mean.ravel().tolist() == [0.0] * 3
        fed = pixels[:, ::-1] if channels == "bgr" else pixels
        expected = ((fed - 127.5) * 0.0078125).mean(axis=(2, 3))
        np.testing.assert_allclose(teacher.forward_features(x).embedding.numpy(), expected,
                                   atol=1e-5)  # fmt: skip
    # no normalisation in the graph: InsightFace's default mean = std = 127.5 is applied here
    plain = OnnxTeacher(_hand_graph(tmp_path / "plain.onnx", normalise_in_graph=False))
    np.testing.assert_allclose(
        plain.forward_features(x).embedding.numpy(), x.numpy().mean(axis=(2, 3)), atol=1e-5
    )
    explicit = OnnxTeacher(tmp_path / "plain.onnx", mean=[0, 0, 0], std=1)
    np.testing.assert_allclose(
        explicit.forward_features(x).embedding.numpy(), pixels.mean(axis=(2, 3)), atol=1e-3
    )
    # per-channel mean / std are given in the model's (here BGR) channel order
    bgr = OnnxTeacher(tmp_path / "plain.onnx", channels="bgr", mean=[10, 20, 30], std=[1, 2, 4])
    expected = (pixels[:, ::-1] - np.array([10, 20, 30]).reshape(1, 3, 1, 1)) / np.array(
        [1, 2, 4]
    ).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(
        bgr.forward_features(x).embedding.numpy(), expected.mean(axis=(2, 3)), rtol=1e-4, atol=1e-3
    )


def test_onnx_teacher_errors_are_clear(exported, tmp_path):
    _, ckpt, onnx_path = exported
    teacher = OnnxTeacher(onnx_path)
    with pytest.raises(ValueError, match=r"takes \(B, 3, 32, 32\) faces, got \(2, 3, 16, 16\)"):
        teacher.forward_features(torch.zeros(2, 3, 16, 16))
    with pytest.raises(OnnxTeacherError, match="input_size=64 but the graph's input is 32x32"):
        OnnxTeacher(onnx_path, input_size=64)
    with pytest.raises(OnnxTeacherError, match="not a readable ONNX model"):
        OnnxTeacher(ckpt)
    with pytest.raises(OnnxTeacherError, match="channels must be one of"):
        OnnxTeacher(onnx_path, channels="yuv")
    with pytest.raises(OnnxTeacherError, match="no tensor named 'nope'"):
        OnnxTeacher(onnx_path, pooled_output="nope")
    odd = _hand_graph(tmp_path / "odd.onnx", layout="nchw", size=8)
    import onnx

    model = onnx.load(odd)  # an input whose shape has no axis of size 3: layout unknowable
    for d, v in zip(model.graph.input[0].type.tensor_type.shape.dim[1:], (4, 8, 8), strict=True):
        d.dim_value = v
    onnx.save(model, tmp_path / "odd4.onnx")
    with pytest.raises(OnnxTeacherError, match="cannot tell the input layout"):
        OnnxTeacher(tmp_path / "odd4.onnx")


def test_black_box_teacher_refuses_stage_methods_and_serves_pooled_when_named(exported):
    model, _, onnx_path = exported
    student = _backbone(1)
    teacher = OnnxTeacher(onnx_path)
    with pytest.raises(ValueError, match=r"fitnets.*stages.*white-box"):
        Distiller(student, losses={"fitnets": build_loss("fitnets")}, teacher=teacher)
    with pytest.raises(ValueError, match=r"pooling_transfer.*pooled_output"):
        Distiller(student, losses={"pooling_transfer": build_loss("pooling_transfer")},
                  teacher=teacher)  # fmt: skip
    # the pooled feature is an intermediate tensor of the graph: name it and it is served
    import onnx

    graph = onnx.load(onnx_path).graph
    flat = next(n.output[0] for n in graph.node if n.op_type in ("Flatten", "Reshape"))
    with_pooled = OnnxTeacher(onnx_path, pooled_output=flat)
    x = _faces(3)
    got = with_pooled.forward_features(x).pooled
    assert got is not None and got.shape[0] == 3
    losses = {name: build_loss(name) for name in ("pooling_transfer", "embedding")}
    distiller = Distiller(student, losses=losses, teacher=with_pooled)
    # the named tensor is GDC's flattened depthwise output: the same computed in torch
    with torch.no_grad():
        gdc_flat = model.features.layers[:2](model._body(x)[1])
    assert got.shape == gdc_flat.shape and _cosines(got, gdc_flat).min() >= 0.9999
    # online (no cache): the ONNX teacher runs inside the training step; gradients reach
    # the student only
    from facekd.types import Batch

    batch = Batch(images=x, labels=torch.zeros(3, dtype=torch.long))
    distiller.prepare(batch)
    terms = distiller(batch)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and set(terms) >= {"kd/embedding", "kd/pooling_transfer"}
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_ensemble_combines_as_documented():
    a, b = _backbone(0), _backbone(1)
    heads = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        heads.append(build_head("arcface", num_classes=5, embedding_size=32).eval())
    x = _faces(4)
    with torch.no_grad():
        ea, eb = a.forward_features(x), b.forward_features(x)
        mean = TeacherEnsemble([a, b], combine="mean", heads=heads, T=3.0).forward_features(x)
        cat = TeacherEnsemble([a, b], combine="concat").forward_features(x)
        za, zb = heads[0](ea.embedding).logits, heads[1](eb.embedding).logits
    na, nb = F.normalize(ea.embedding, dim=1), F.normalize(eb.embedding, dim=1)
    torch.testing.assert_close(mean.embedding, (na + nb) / 2)
    torch.testing.assert_close(cat.embedding, torch.cat([na, nb], 1))
    torch.testing.assert_close(
        mean.pooled, (F.normalize(ea.pooled, dim=1) + F.normalize(eb.pooled, dim=1)) / 2
    )
    # Hinton: the tempered softmax of the combined logits is the average of the members'
    avg = (torch.softmax(za / 3.0, 1) + torch.softmax(zb / 3.0, 1)) / 2
    torch.testing.assert_close(torch.softmax(mean.logits / 3.0, 1), avg)
    assert mean.stages == [] and "stages" not in TeacherEnsemble([a, b]).provides


def test_average_probabilities_as_logits_single_member_is_identity_up_to_shift():
    z = torch.randn(3, 7)
    torch.testing.assert_close(
        torch.softmax(average_probabilities_as_logits([z], 2.0) / 2.0, 1), torch.softmax(z / 2, 1)
    )


def test_mixed_ensemble_is_cached_as_its_combined_output(exported, tmp_path):
    """torch backbone + ONNX file; the cache holds exactly what the ensemble returns."""
    _, _, onnx_path = exported
    ens = TeacherEnsemble([_backbone(1), OnnxTeacher(onnx_path)], combine="concat")
    data = SyntheticFaces(2, 3, size=SIZE)
    cache = build_teacher_cache(ens, data, tmp_path / "c", "p", dtype="float32", progress=False)
    assert cache.fields == ("embedding",)  # the ONNX member has no pooled feature
    from facekd.data.batching import collate_batch

    batch = collate_batch([data[i] for i in range(len(data))])
    live = ens.forward_features(batch.images).embedding
    got = cache.lookup(torch.arange(len(data))).embedding
    assert got.shape == (6, 64)
    torch.testing.assert_close(got, live, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no stage maps"):
        build_teacher_cache(ens, data, tmp_path / "d", "p", stages=(2,), progress=False)


def test_ensemble_config_with_fitted_member_heads_feeds_hinton(exported, tmp_path):
    _, ckpt, onnx_path = exported
    cfg = from_dict(
        ExperimentConfig,
        {
            "out_dir": str(tmp_path / "s"),
            "student": {"kwargs": {"width": 0.25, "num_features": 32}},
            "teacher": {
                "ensemble": [{"model": str(ckpt), "head": "fit"},
                             {"onnx": str(onnx_path), "head": "fit"}],
                "cache": str(tmp_path / "cache"),
            },  # fmt: skip
            "losses": [{"name": "hinton", "kwargs": {"T": 2.0}}],
            "data": {"identities": 3, "images_per_identity": 3, "image_size": SIZE,
                     "augment": {"flip_p": 0.0}, "workers": 0},
        },
    )  # fmt: skip
    dataset = build_dataset(cfg, None)
    distiller = build_distiller(cfg, dataset)
    assert distiller.teacher_cache.fields == ("embedding", "logits")
    assert "T=2.0" in distiller.teacher_cache.meta["key"]["preprocessing"]
    from facekd.data.batching import collate_batch

    batch = collate_batch([dataset[i] for i in range(4)])
    terms = distiller(batch)
    assert torch.isfinite(terms["loss"]) and "kd/hinton" in terms


def test_mean_over_unequal_embeddings_is_refused_before_any_head_is_fitted(exported, tmp_path):
    _, ckpt, _ = exported
    wide = tmp_path / "wide.pt"
    save_backbone(_backbone(3, num_features=64), wide)
    fitted = []
    spec = from_dict(
        ExperimentConfig,
        {
            "teacher": {
                "ensemble": [
                    {"model": str(ckpt), "head": "fit"},
                    {"model": str(wide), "head": "fit"},
                ]
            }
        },
    ).teacher
    from facekd.teachers import build_teacher

    with pytest.raises(ValueError, match=r"equal embedding sizes, got \[32, 64\]; use"):
        build_teacher(spec, head_for=lambda member, option: fitted.append(member))
    assert fitted == []  # refused before the (costly) head fits
    spec.combine = "concat"  # Hinton reads only the averaged probabilities: concat serves
    heads = [build_head("arcface", num_classes=3, embedding_size=d).eval() for d in (32, 64)]

    def head_for(member, option):
        fitted.append(member)
        return heads[len(fitted) - 1]

    ens = build_teacher(spec, head_for=head_for)
    out = ens.forward_features(_faces(2))
    assert out.embedding.shape == (2, 96) and out.logits.shape == (2, 3)


def test_teacher_config_errors(tmp_path, exported):
    _, ckpt, onnx_path = exported
    base = {"losses": [{"name": "embedding"}], "data": {"image_size": SIZE, "identities": 2}}
    bad = [
        ({"model": str(ckpt), "onnx": str(onnx_path)}, "give one of model, onnx, ensemble"),
        ({"ensemble": [{"model": str(ckpt), "onnx": str(onnx_path)}, {"model": str(ckpt)}]},
         r"ensemble\[0\]: give exactly one of model and onnx"),
        ({"ensemble": [{"model": str(ckpt)}]}, "at least 2 teachers"),
        ({"ensemble": [{"model": str(ckpt), "head": "fit"}, {"model": str(ckpt)}]},
         "every member or to none"),
    ]  # fmt: skip
    for teacher, message in bad:
        cfg = from_dict(ExperimentConfig, {**base, "teacher": teacher})
        with pytest.raises(ValueError, match=message):
            build_distiller(cfg, build_dataset(cfg, None))


def test_fit_teacher_head_separates_clustered_identities():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(6, 16, generator=g), dim=1)
    labels = torch.arange(6).repeat_interleave(10)
    emb = centres[labels] + 0.1 * torch.randn(60, 16, generator=g)
    head = fit_teacher_head(emb.half().numpy(), labels.numpy(), steps=50)
    assert head.train_accuracy == 1.0 and not head.training
    assert all(not p.requires_grad for p in head.parameters())
    # the class-mean start alone is already close to the true centres
    assert F.cosine_similarity(head.weight, centres, dim=1).min() > 0.9
    with pytest.raises(ValueError, match="NaN"):
        fit_teacher_head(torch.full((4, 3), float("nan")), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="no embedding"):
        fit_teacher_head(emb[:10], labels[:10], num_classes=3)


def test_real_legacy_model_as_onnx_teacher_caches_what_torch_does(tmp_path):
    """The real InsightFace MobileFaceNet, exported by facekd, as an ONNX teacher over the
    real aligned faces of the RecordIO sample: the same cache as the torch model."""
    from facekd.data.recordio import RecordIODataset
    from facekd.deploy.export import export_onnx
    from facekd.models.checkpoints import load_backbone
    from tests.conftest import shared_path

    legacy = shared_path("insightface-mobilefacenet-legacy") / "model"
    faces = RecordIODataset(shared_path("recordio-sample"))
    torch_model = load_backbone(str(legacy))
    export_onnx(torch_model, tmp_path / "mbf.onnx")
    caches = [
        build_teacher_cache(t, faces, tmp_path / name, "112", dtype="float32", progress=False)
        for name, t in (("torch", torch_model), ("onnx", OnnxTeacher(tmp_path / "mbf.onnx")))
    ]
    a, b = (torch.from_numpy(np.array(c.arrays["embedding"])) for c in caches)
    assert a.shape == (8, 128) and _cosines(a, b).min() >= 0.9999


def test_single_teacher_head_is_fitted_once_from_the_cache(exported, tmp_path, monkeypatch):
    """``teacher.head: fit`` with a cache: one fit, on the cached embeddings (no teacher pass)."""
    import facekd.teachers.fitted_head as th

    _, ckpt, _ = exported
    calls = []
    real_fit = th.fit_teacher_head

    def spy(embeddings, labels, **kw):
        calls.append(type(embeddings))
        return real_fit(embeddings, labels, **kw)

    monkeypatch.setattr(th, "fit_teacher_head", spy)
    cfg = from_dict(
        ExperimentConfig,
        {
            "student": {"kwargs": {"width": 0.25, "num_features": 32}},
            "teacher": {"model": str(ckpt), "cache": str(tmp_path / "c"), "head": "fit",
                        "head_fit": {"steps": 5}},
            "losses": [{"name": "hinton"}],
            "data": {"identities": 3, "images_per_identity": 2, "image_size": SIZE,
                     "augment": {"flip_p": 0.0}, "workers": 0},
        },
    )  # fmt: skip
    distiller = build_distiller(cfg, build_dataset(cfg, None))
    assert calls == [np.memmap] and distiller.teacher_head.weight.shape == (3, 32)
    plain = to_plain(cfg)
    plain["teacher"]["head_fit"] = {"stesp": 5}
    bad = from_dict(ExperimentConfig, plain)
    with pytest.raises(ValueError, match=r"head_fit: unknown key\(s\) \['stesp'\]"):
        build_distiller(bad, build_dataset(bad, None))


def to_plain(cfg) -> dict:
    from facekd.config import to_dict

    return to_dict(cfg)


def test_cache_teacher_command_takes_an_onnx_teacher(exported, tmp_path, capsys):
    import yaml

    from facekd.cli import main

    _, _, onnx_path = exported
    cfg = {
        "teacher": {"onnx": str(onnx_path), "cache": str(tmp_path / "cache")},
        "losses": [{"name": "triplet_distillation"}],
        "data": {"identities": 2, "images_per_identity": 2, "image_size": SIZE,
                 "sampler": "pk", "p": 2, "k": 2, "workers": 0},
    }  # fmt: skip
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["cache-teacher", str(path)]) == 0
    assert "teacher cache ready" in capsys.readouterr().out
    assert (tmp_path / "cache" / "meta.json").exists()
    cfg["losses"] = [{"name": "attention"}]  # needs stage maps: refused before any caching
    path.write_text(yaml.safe_dump(cfg | {"teacher": {**cfg["teacher"], "cache": "x"}}))
    assert main(["cache-teacher", str(path)]) == 2
    assert "white-box" in capsys.readouterr().err and not (tmp_path / "x").exists()
