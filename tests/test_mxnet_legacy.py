"""Legacy MXNet import (facekd.models.mxnet_legacy): reader, symbol, both mappings, real LFW.

The writer below follows MXNet's ``NDArray::Save`` (src/ndarray/ndarray.cc) on its own, so the
reader is checked against it, and against the real file byte for byte.
"""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch

from facekd.models import build_backbone
from facekd.models.mxnet_legacy import load_mxnet_legacy, read_ndarray_file, read_symbol
from tests.conftest import shared_path

FLAGS = {"float32": 0, "float64": 1, "float16": 2, "uint8": 3, "int32": 4, "int8": 5, "int64": 6}
MAGIC = {"v1": 0xF993FAC8, "v2": 0xF993FAC9, "v3": 0xF993FACA}


def write_ndarray_file(path, named: dict[str, np.ndarray], version: str = "v2") -> None:
    """MXNet NDArray list: header, arrays (magic, [stype], shape, cpu(0), dtype, data), names."""
    out = [struct.pack("<QQQ", 0x112, 0, len(named))]
    for a in named.values():
        if version == "v0":  # pre-1.0: no magic, uint32 ndim and dims
            out.append(struct.pack(f"<I{a.ndim}I", a.ndim, *a.shape))
        else:
            stype = b"" if version == "v1" else struct.pack("<i", 0)
            out.append(struct.pack("<I", MAGIC[version]) + stype)
            out.append(struct.pack(f"<i{a.ndim}q", a.ndim, *a.shape))
        out.append(
            struct.pack("<iii", 1, 0, FLAGS[a.dtype.name])
            + a.astype(a.dtype.newbyteorder("<")).tobytes()
        )
    out.append(struct.pack("<Q", len(named)))
    out += [struct.pack("<Q", len(k.encode())) + k.encode() for k in named]
    path.write_bytes(b"".join(out))


def prefixed(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """MXNet's ``arg:`` / ``aux:`` names (BatchNorm moving statistics are auxiliary states)."""
    return {("aux:" if k.endswith(("_moving_mean", "_moving_var")) else "arg:") + k: v
            for k, v in arrays.items()}  # fmt: skip


class Graph:
    """A ``-symbol.json`` writer: nodes with op, name, attributes and ``[id, 0, 0]`` inputs."""

    def __init__(self, attr_key: str = "attrs") -> None:
        self.key, self.arrays = attr_key, {}
        self.nodes = [{"op": "null", "name": "data", "inputs": []}]

    def add(self, op: str, name: str, inputs: list[int], params=(), **attrs) -> int:
        for role, value in params:  # weights are "null" variable nodes named <op>_<role>
            self.arrays[f"{name}_{role}"] = np.asarray(value, np.float32)
            self.nodes.append({"op": "null", "name": f"{name}_{role}", "inputs": []})
            inputs = [*inputs, len(self.nodes) - 1]
        node = {"op": op, "name": name, "inputs": [[i, 0, 0] for i in inputs]}
        self.nodes.append({**node, self.key: {k: str(v) for k, v in attrs.items()}})
        return len(self.nodes) - 1

    def conv(self, x: int, name: str, w: np.ndarray, stride: int = 1) -> int:
        k = w.shape[-1]
        attrs = {"kernel": (k, k), "stride": (stride, stride), "pad": (k // 2, k // 2)}
        return self.add("Convolution", name, [x], [("weight", w)], no_bias=True, **attrs)

    def bn(self, x: int, name: str, sd: dict, key: str, **attrs) -> int:
        roles = ("gamma", "beta", "moving_mean", "moving_var")
        values = [sd[f"{key}.{r}"] for r in ("weight", "bias", "running_mean", "running_var")]
        return self.add("BatchNorm", name, [x], list(zip(roles, values, strict=True)), **attrs)

    def prelu(self, x: int, name: str, gamma: np.ndarray) -> int:
        return self.add("LeakyReLU", name, [x], [("gamma", gamma)], act_type="prelu")

    def save(self, prefix, version: str = "v2") -> None:
        graph = {"nodes": self.nodes, "heads": [[len(self.nodes) - 1, 0, 0]], "arg_nodes": []}
        prefix.with_name(f"{prefix.name}-symbol.json").write_text(json.dumps(graph))
        params = prefix.with_name(f"{prefix.name}-0000.params")
        write_ndarray_file(params, prefixed(self.arrays), version)


def lresnet(tmp_path, attr_key="attrs", version="v2", scalars=(127.5, 0.0078125)):
    """A tiny fresnet LResNet18E-IR (residual_unit_v3, output "E") from a random facekd iResNet.

    Returns the source model (eval mode, MXNet eps) and the graph written to tmp_path/model.
    """
    torch.manual_seed(0)
    src = build_backbone("iresnet18", width=0.125, input_size=32, num_features=16)
    sd = {k: v.numpy().copy() for k, v in src.state_dict().items()}
    rng = np.random.default_rng(0)
    for k, v in sd.items():  # non-trivial BN statistics and PReLU slopes
        if k.endswith(("running_var", "bn1.weight", "bn2.weight", "bn3.weight", "prelu.weight")):
            sd[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
        elif k.endswith(("running_mean", ".bias")):
            sd[k] = rng.normal(0, 0.1, v.shape).astype(np.float32)
    sd["features.weight"] = np.ones_like(sd["features.weight"])  # fix_gamma: gamma is 1 ...
    src.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    sd["features.weight"] = sd["features.weight"] + 2.0  # ... whatever the file stores
    for m in src.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eps = 2e-5
    g, eps = Graph(attr_key), {"eps": 2e-5, "fix_gamma": False}
    x = g.add("identity", "id", [0])
    x = g.add("_minus_scalar", "_minusscalar0", [x], scalar=scalars[0])
    x = g.add("_mul_scalar", "_mulscalar0", [x], scalar=scalars[1])
    # MXNet's conv0 sees (pixel - 127.5) * s, facekd's (pixel - 127.5) / 127.5
    x = g.conv(x, "conv0", sd["conv1.weight"] / (127.5 * scalars[1]))
    x = g.prelu(g.bn(x, "bn0", sd, "bn1", **eps), "relu0", sd["prelu.weight"])
    for s in range(1, 5):
        for u in range(2):
            t, n = f"layer{s}.{u}", f"stage{s}_unit{u + 1}"
            y = g.conv(
                g.bn(x, f"{n}_bn1", sd, f"{t}.bn1", **eps), f"{n}_conv1", sd[f"{t}.conv1.weight"]
            )
            y = g.prelu(
                g.bn(y, f"{n}_bn2", sd, f"{t}.bn2", **eps), f"{n}_relu1", sd[f"{t}.prelu.weight"]
            )
            y = g.conv(y, f"{n}_conv2", sd[f"{t}.conv2.weight"], stride=2 - u)
            y = g.bn(y, f"{n}_bn3", sd, f"{t}.bn3", **eps)
            if u == 0:  # projection shortcut of the first, strided unit
                x = g.conv(x, f"{n}_conv1sc", sd[f"{t}.downsample.0.weight"], stride=2)
                x = g.bn(x, f"{n}_sc", sd, f"{t}.downsample.1", **eps)
            x = g.add("elemwise_add", f"_plus{s}{u}", [y, x])
    x = g.add("Dropout", "dropout0", [g.bn(x, "bn1", sd, "bn2", **eps)], p=0.4)
    fc = [("weight", sd["fc.weight"]), ("bias", sd["fc.bias"])]
    x = g.add("FullyConnected", "pre_fc1", [x], fc, num_hidden=16)
    g.bn(x, "fc1", sd, "features", eps=2e-5, fix_gamma=True)
    g.save(tmp_path / "model", version)
    return src.eval(), g


def test_synthetic_lresnet_round_trip(tmp_path):
    src, g = lresnet(tmp_path)
    model = load_mxnet_legacy(tmp_path / "model")
    assert (model.arch, model.arch_kwargs) == (
        "iresnet18",
        {"num_features": 16, "width": 0.125, "input_size": 32},
    )
    assert not model.training and model.features.weight.eq(1).all()  # fix_gamma honoured
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    rebuilt = build_backbone(model.arch, **model.arch_kwargs).eval()  # = a save / load cycle
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        want = src(x)
        assert want.std(0).mean() > 0.1 * want.abs().mean()  # outputs depend on the input
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(rebuilt(x), want, rtol=1e-4, atol=1e-4)  # eps is in the weights
    ours = model.state_dict()
    for key, value in src.state_dict().items():
        if key.endswith("running_var"):  # var + eps: MXNet's 2e-5 into torch's 1e-5
            value = value + 2e-5 - 1e-5
        torch.testing.assert_close(ours[key], value, rtol=1e-6, atol=1e-6, msg=key)


@pytest.mark.parametrize("attr_key", ["attr", "param"])
@pytest.mark.parametrize("version", ["v0", "v1", "v3"])
def test_older_formats_read_the_same(tmp_path, attr_key, version):
    (tmp_path / "a").mkdir()
    lresnet(tmp_path / "a", attr_key, version)
    lresnet(tmp_path)
    new = read_ndarray_file(tmp_path / "model-0000.params")
    old = read_ndarray_file(tmp_path / "a" / "model-0000.params")
    assert list(old) == list(new) and all(np.array_equal(old[k], new[k]) for k in new)
    assert read_symbol(tmp_path / "a" / "model-symbol.json").preprocess == [
        ("_minus_scalar", 127.5),
        ("_mul_scalar", 0.0078125),
    ]
    load_mxnet_legacy(tmp_path / "a" / "model-symbol.json")


def test_corrupt_files_raise_with_path_and_offset(tmp_path):
    lresnet(tmp_path)
    good = (tmp_path / "model-0000.params").read_bytes()
    bad = tmp_path / "bad.params"
    cases = [
        np.random.default_rng(0).bytes(4096),
        b"",
        good[:10],
        struct.pack("<Q", 0x113) + good[8:],
    ]
    cases += [good[:n] for n in (24, 30, 60, len(good) // 2, len(good) - 1)]
    for blob in cases:
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match=r"bad\.params.*byte offset \d+"):
            read_ndarray_file(bad)
    bad.write_bytes(good + b"x")
    with pytest.raises(ValueError, match="trailing"):
        read_ndarray_file(bad)
    (tmp_path / "x-symbol.json").write_text("{not json")
    with pytest.raises(ValueError, match="x-symbol.json"):
        read_symbol(tmp_path / "x-symbol.json")


def test_unmapped_and_unfilled_arrays_are_listed(tmp_path):
    _, g = lresnet(tmp_path)
    params = tmp_path / "model-0000.params"
    extra = {**g.arrays, "stray_weight": np.zeros(3, np.float32)}
    write_ndarray_file(params, prefixed(extra))
    with pytest.raises(ValueError, match="unmapped.*stray_weight"):
        load_mxnet_legacy(params)
    missing = {k: v for k, v in g.arrays.items() if k != "stage2_unit1_sc_moving_var"}
    write_ndarray_file(params, prefixed(missing))
    with pytest.raises(ValueError, match=r"(?s)stage2_unit1_sc.*layer2\.0\.downsample\.1"):
        load_mxnet_legacy(params)
    with pytest.raises(FileNotFoundError, match="model-0007.params"):
        load_mxnet_legacy(tmp_path / "model", epoch=7)


def test_other_preprocessing_is_refused(tmp_path):
    lresnet(tmp_path, scalars=(127.5, 1.0))  # raw-range input: not facekd's convention
    with pytest.raises(ValueError, match="normalises its input"):
        load_mxnet_legacy(tmp_path / "model")


# ------------------------------------------------------- the real InsightFace MobileFaceNet


@pytest.fixture(scope="module")
def legacy_dir():
    return shared_path("insightface-mobilefacenet-legacy")


def test_real_params_read_exactly(legacy_dir, tmp_path):
    arrays = read_ndarray_file(legacy_dir / "model-0000.params")
    assert len(arrays) == 284
    assert arrays["conv_1_conv2d_weight"].shape == (64, 3, 3, 3)
    assert arrays["conv_6dw7_7_conv2d_weight"].shape == (512, 1, 7, 7)
    assert arrays["fc1_weight"].shape == (128, 512) and arrays["pre_fc1_bias"].shape == (128,)
    assert all(a.dtype == np.float32 for a in arrays.values())
    write_ndarray_file(tmp_path / "again.params", prefixed(arrays))  # the independent writer
    assert (tmp_path / "again.params").read_bytes() == (
        legacy_dir / "model-0000.params"
    ).read_bytes()


def test_real_symbol(legacy_dir):
    sym = read_symbol(legacy_dir / "model-symbol.json")
    assert sym.preprocess == [("_minus_scalar", 127.5), ("_mul_scalar", 0.0078125)]
    assert sym.embedding_size == 128 and sym.first_op == "conv_1_conv2d"
    assert sym.batchnorm(sym.op("conv_1_batchnorm")) == (1e-3, False)  # eps absent: default
    assert sym.batchnorm(sym.op("fc1")) == (2e-5, True)


def test_real_model_loads_strictly(legacy_dir):
    model = load_mxnet_legacy(legacy_dir)
    assert model.arch == "mobilefacenet" and not model.training
    assert model.arch_kwargs["num_features"] == 128 and model.arch_kwargs["blocks"] == (1, 4, 6, 2)
    assert 0.9e6 < sum(p.numel() for p in model.parameters()) < 1.1e6
    arrays = read_ndarray_file(legacy_dir / "model-0000.params")
    for bn, name, eps in ((model.layers[0].layers[1], "conv_1_batchnorm", 1e-3),
                          (model.features.layers[3], "fc1", 2e-5)):  # fmt: skip
        var = torch.from_numpy(arrays[f"{name}_moving_var"]).double() + eps - bn.eps
        torch.testing.assert_close(bn.running_var, var.float())  # MXNet eps, folded
    w = torch.from_numpy(arrays["conv_1_conv2d_weight"]) * (127.5 / 128)  # input scale folded
    torch.testing.assert_close(model.layers[0].layers[0].weight.data, w)
    assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 128)


def test_fc1_bias_fold_is_exact(legacy_dir, tmp_path):
    arrays = read_ndarray_file(legacy_dir / "model-0000.params")
    rng = np.random.default_rng(0)
    arrays["pre_fc1_bias"] = rng.normal(0, 0.5, 128).astype(np.float32)  # the real one is ~1e-8
    arrays["fc1_gamma"] = np.full(128, 3.0, np.float32)  # fix_gamma=True: must be ignored
    shutil.copy(legacy_dir / "model-symbol.json", tmp_path / "model-symbol.json")
    write_ndarray_file(tmp_path / "model-0000.params", prefixed(arrays))
    model = load_mxnet_legacy(tmp_path / "model")
    v = rng.normal(0, 1, (4, 512)).astype(np.float64)  # a GDC output (B, 512)
    z = v @ arrays["fc1_weight"].T.astype(np.float64) + arrays["pre_fc1_bias"]
    mean, var = arrays["fc1_moving_mean"], arrays["fc1_moving_var"]
    want = (z - mean) / np.sqrt(var + 2e-5) * 1.0 + arrays["fc1_beta"]
    with torch.no_grad():
        got = model.features.layers[2:](torch.from_numpy(v).float()).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Centre of the widest-accuracy threshold interval (the lowest argmax would overfit)."""
    s = np.unique(scores)
    cuts = np.concatenate([[s[0] - 1e-6], (s[1:] + s[:-1]) / 2, [s[-1] + 1e-6]])
    acc = np.array([((scores >= c) == same).mean() for c in cuts])
    best = np.flatnonzero(acc == acc.max())
    return float(cuts[best[0]] + cuts[best[-1]]) / 2


@pytest.mark.slow
def test_real_model_verifies_lfw(legacy_dir):
    """60 LFW pairs (15 matched + 15 mismatched per fold), threshold from the other fold.

    On all 1,200 pairs of lfw-mini this pipeline measured 99.58% (the README quotes 99.4-99.5%).
    """
    from facekd.data.align import norm_crop
    from facekd.data.detect import FaceDetector
    from facekd.data.pairlists import read_lfw_pairs
    from facekd.data.transforms import flip, read_rgb, to_tensor

    lfw = shared_path("lfw-mini")
    ps = read_lfw_pairs(lfw / "pairs.txt", lfw / "images")
    pick = [np.flatnonzero((ps.folds == f) & (ps.issame == m))[:15] for f in (0, 1) for m in (1, 0)]
    sel = np.concatenate(pick)
    pairs, same, folds = ps.pairs[sel], ps.issame[sel], ps.folds[sel]
    ids = sorted(set(pairs.ravel().tolist()))
    detector = FaceDetector(min_face_size=40)  # LFW faces are ~100 px: a shorter image pyramid
    crops = []
    for start in range(0, len(ids), 16):  # LFW photos are all 250x250: one MTCNN batch
        images = [read_rgb(ps.images[i]) for i in ids[start : start + 16]]
        for image, faces in zip(images, detector.detect(images), strict=True):
            assert faces, "MTCNN found no face in an LFW photo"
            crops.append(to_tensor(norm_crop(image, faces[0].landmarks)))
    model = load_mxnet_legacy(legacy_dir)
    with torch.no_grad():
        x = torch.stack(crops)  # (N, 3, 112, 112)
        emb = torch.nn.functional.normalize(model(x) + model(flip(x)), dim=1).numpy()
    row = {i: k for k, i in enumerate(ids)}
    scores = np.array([emb[row[a]] @ emb[row[b]] for a, b in pairs.tolist()])
    acc = [
        ((scores[folds == f] >= best_threshold(scores[folds != f], same[folds != f]))
         == same[folds == f]).mean()
        for f in (0, 1)
    ]  # fmt: skip
    assert np.mean(acc) >= 0.95, f"LFW 2-fold accuracy {acc} on 60 pairs"
    assert scores[same].mean() - scores[~same].mean() > 0.4
