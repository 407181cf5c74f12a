"""High-to-low resolution pooling-feature transfer and knowledge-transfer init (Karlekar 2019)."""

from __future__ import annotations

import copy

import pytest
import torch

from facekd.config import ExperimentConfig, from_dict
from facekd.engine.distiller import Distiller
from facekd.losses.pooling_transfer import HRLRSchedule, PoolingTransfer, pooling_transfer_loss
from facekd.models import build_backbone
from facekd.models.transfer import (
    GDC_KEY,
    TransferError,
    build_kt_student,
    knowledge_transfer,
    resample_spatial,
)
from facekd.types import Batch, ModelOutput


def _faces(b: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def _pair_batch(b: int = 4, low: int = 56, high: int = 112) -> Batch:
    hi = _faces(b, high)
    lo = torch.nn.functional.interpolate(hi, size=(low, low), mode="area")
    return Batch(images=lo, labels=torch.arange(b), teacher_images=hi)


# -- pooled feature -------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 48, 56, 80, 112])
def test_pooled_shape_independent_of_resolution(size):
    torch.manual_seed(0)
    mbf = build_backbone("mbf", input_size=size).eval()  # full width: conv_sep -> 512
    assert mbf.forward_features(_faces(2, size)).pooled.shape == (2, 512)
    small = build_backbone("iresnet18", width=0.25, input_size=size, head="gap").eval()
    out = small.forward_features(_faces(2, size))
    assert out.pooled.shape == (2, small.bn2.num_features) == (2, 128)
    assert out.embedding.shape == (2, 512)


def test_pooled_full_width_iresnet_low_res():
    torch.manual_seed(0)
    model = build_backbone("iresnet18", input_size=32).eval()
    assert model.forward_features(_faces(2, 32)).pooled.shape == (2, 512)


# -- knowledge transfer --------------------------------------------------------------------
def _teacher(arch: str = "iresnet18", **kw):
    torch.manual_seed(1)
    return build_backbone(arch, input_size=112, **{"width": 0.25, **kw}).eval()


@pytest.mark.parametrize("arch", ["iresnet18", "mbf"])
def test_kt_copies_every_conv_bn_tensor_bit_exactly(arch):
    teacher = _teacher(arch)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, report = build_kt_student(teacher, input_size=56)
    key = "fc.weight" if arch == "iresnet18" else GDC_KEY
    expect_reinit = ["fc.weight", "fc.bias"] if arch == "iresnet18" else [GDC_KEY]
    assert report.reinitialised == expect_reinit and report.resized == []
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    assert sorted(report.copied + report.reinitialised) == sorted(s_sd)
    convs_bns = [k for k in s_sd if k not in expect_reinit]
    assert any("prelu" in k or k.endswith("2.weight") for k in convs_bns)
    for k in convs_bns:
        assert torch.equal(s_sd[k], t_sd[k]), k
    assert s_sd[key].shape != t_sd[key].shape
    assert all(torch.equal(v, before[k]) for k, v in t_sd.items())  # teacher untouched
    assert "fc" in str(report) or "features" in str(report)


def test_kt_into_a_last_stride_one_student_copies_every_tensor_with_the_teacher_gdc():
    teacher = _teacher("mobilefacenet")
    student, report = build_kt_student(teacher, input_size=56, fc="resize", last_stride=1)
    assert report.resized == [] and report.reinitialised == []
    assert sorted(report.copied) == sorted(teacher.state_dict())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in student.state_dict().items())
    assert student.arch_kwargs["last_stride"] == 1 and student.input_size == 56


def test_kt_resize_fc_teacher_to_gap_student_preserves_constant_maps():
    teacher = _teacher()
    student, report = build_kt_student(teacher, input_size=56, fc="resize", head="gap")
    assert report.resized == ["fc.weight"] and "fc.bias" in report.copied
    d, c = student.fc.weight.shape
    summed = teacher.fc.weight.view(d, c, 49).double().sum(-1).float()  # 49/1 * mean
    torch.testing.assert_close(student.fc.weight, summed)
    student.eval()
    v = torch.randn(3, c, 1, 1)
    with torch.no_grad():  # a spatially constant last map: same embedding at 112 and 56 px
        torch.testing.assert_close(
            student._head(v.expand(3, c, 4, 4)), teacher._head(v.expand(3, c, 7, 7))
        )


def test_kt_resize_shapes_and_gdc():
    teacher = _teacher("mbf")
    student, report = build_kt_student(teacher, input_size=32, fc="resize")
    assert report.resized == [GDC_KEY]
    assert student.state_dict()[GDC_KEY].shape[-2:] == (2, 2)
    fc_student, fc_report = build_kt_student(_teacher(), input_size=56, fc="resize")
    assert fc_report.resized == ["fc.weight"]
    assert fc_student.fc.weight.shape == (512, 128 * 4 * 4)


def test_resample_spatial_keeps_kernel_sums_when_sides_divide():
    w = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    for side in (1, 2, 4, 8):
        out = resample_spatial(w, side)
        assert out.shape == (2, 3, side, side)
        torch.testing.assert_close(out.sum((-1, -2)), w.sum((-1, -2)))


def test_kt_gap_student_of_gap_teacher_copies_fc():
    teacher = _teacher(head="gap")
    _, report = build_kt_student(teacher, input_size=48)
    assert report.resized == report.reinitialised == [] and "fc.weight" in report.copied


@pytest.mark.parametrize(
    "student",
    [
        lambda: build_backbone("iresnet34", width=0.25, input_size=56),
        lambda: build_backbone("mbf", width=0.25, input_size=56),
        lambda: build_backbone("iresnet18", width=0.5, input_size=56),
        lambda: build_backbone("iresnet18", width=0.25, input_size=56, num_features=128),
    ],
)
def test_kt_refuses_other_architectures(student):
    with pytest.raises(TransferError, match="same architecture") as err:
        knowledge_transfer(student(), _teacher())
    assert "METHODS §2.4" in str(err.value)
    assert ("keys" in str(err.value)) or ("wrong shapes" in str(err.value))


def test_kt_validates_fc_mode():
    with pytest.raises(ValueError, match="fc mode"):
        knowledge_transfer(_teacher(), _teacher(), fc="copy")


# -- the loss ------------------------------------------------------------------------------
def test_raw_l2_and_normalised_hand_values():
    p_s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    p_t = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    # per face ||p_s - p_t||^2 = 1 + 4 = 5 and 9 + 16 = 25; mean over the batch = 15
    assert pooling_transfer_loss(p_s, p_t, "raw_l2").item() == pytest.approx(15.0)
    p_s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p_t = torch.tensor([[0.0, 3.0], [0.0, 1.0]])
    # unit vectors: [1,0] vs [0,1] -> 2; [0,1] vs [0,1] -> 0; mean = 1
    assert pooling_transfer_loss(p_s, p_t).item() == pytest.approx(1.0)
    assert pooling_transfer_loss(5 * p_s, p_t).item() == pytest.approx(1.0)  # scale-free


@pytest.mark.parametrize("distance", ["mse_normalised", "raw_l2"])
def test_zero_when_student_is_teacher_and_views_equal(distance):
    teacher = build_backbone("iresnet18", width=0.25, input_size=48).eval()
    student, _ = build_kt_student(teacher, input_size=48)  # bit-exact copy
    distiller = Distiller(
        student, losses={"pt": PoolingTransfer(distance=distance)}, teacher=teacher
    ).eval()
    batch = Batch(images=_faces(3, 48), labels=torch.arange(3))  # teacher_view == images
    assert distiller(batch)["kd/pt"].item() == 0.0


def test_adapter_sized_by_dry_run_and_gradients_reach_student_and_adapter_only():
    torch.manual_seed(0)
    teacher = build_backbone("iresnet18", width=0.5, input_size=64, head="gap")
    student = build_backbone("mbf", width=0.25, input_size=32)
    loss = PoolingTransfer()
    distiller = Distiller(student, losses={"pt": loss}, teacher=teacher)
    batch = _pair_batch(low=32, high=64)
    with pytest.raises(RuntimeError, match="prepare"):
        distiller(batch)
    distiller.prepare(batch)
    assert (loss.adapter.in_features, loss.adapter.out_features) == (128, 256)
    assert set(distiller.adapter_state_dict()) == {"pt.adapter.weight", "pt.adapter.bias"}
    t_before = copy.deepcopy(teacher.state_dict())
    distiller.train()
    out = distiller(batch)["kd/pt"]
    assert torch.isfinite(out) and out.item() > 0
    out.backward()
    assert loss.adapter.weight.grad is not None and loss.adapter.weight.grad.abs().sum() > 0
    assert student.conv_sep.layers[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, t_before[k]) for k, v in teacher.state_dict().items())


def test_pure_function_does_not_differentiate_the_teacher():
    p_s = torch.randn(4, 8, requires_grad=True)
    p_t = torch.randn(4, 8, requires_grad=True)
    pooling_transfer_loss(p_s, p_t, "raw_l2").backward()
    assert p_t.grad is None and p_s.grad is not None


def test_adapter_modes_and_validation():
    s = ModelOutput(embedding=torch.zeros(2, 4), pooled=torch.randn(2, 16))
    t = ModelOutput(embedding=torch.zeros(2, 4), pooled=torch.randn(2, 32))
    with pytest.raises(ValueError, match="adapter='none'"):
        PoolingTransfer(adapter="none").build(s, t)
    same = PoolingTransfer()
    same.build(s, s)
    assert same.adapter is None
    always = PoolingTransfer(adapter="linear")
    always.build(s, s)
    assert always.adapter.in_features == 16
    with pytest.raises(ValueError, match="distance"):
        PoolingTransfer(distance="l1")
    with pytest.raises(ValueError, match="adapter"):
        PoolingTransfer(adapter="conv")
    with pytest.raises(ValueError, match="pooled"):
        PoolingTransfer().build(s, ModelOutput(embedding=torch.zeros(2, 4)))


def test_low_res_student_with_high_res_teacher_end_to_end():
    torch.manual_seed(0)
    teacher = build_backbone("iresnet18", width=0.25, input_size=112)
    student, _ = build_kt_student(teacher, input_size=56, head="gap")
    distiller = Distiller(student, losses={"pt": PoolingTransfer()}, teacher=teacher)
    distiller.prepare(_pair_batch(2))
    value = distiller.train()(_pair_batch(2))["kd/pt"]
    assert torch.isfinite(value) and 0 < value.item() <= 4


# -- the schedule --------------------------------------------------------------------------
def test_schedule_maps_onto_experiment_config():
    cfg = from_dict(ExperimentConfig, HRLRSchedule(init="scratch").to_config("iresnet50"))
    assert (cfg.data.image_size, cfg.data.student_size) == (112, 56)
    assert cfg.student.kwargs == {"head": "gap"} and cfg.train.lr == 0.1
    assert cfg.losses[0].name == "pooling_transfer" and cfg.losses[0].weight == 1.0
    kt = from_dict(ExperimentConfig, HRLRSchedule().to_config(kt_checkpoint="kt56.pt"))
    assert kt.student.name == "kt56.pt" and kt.train.lr == 0.01
    with pytest.raises(ValueError, match="kt_checkpoint"):
        HRLRSchedule().to_config()
    with pytest.raises(ValueError, match="student_res"):
        HRLRSchedule(student_res=224)


def test_kt_student_file_loads_as_experiment_student(tmp_path):
    from facekd.models.checkpoints import load_backbone, save_backbone

    student, _ = build_kt_student(_teacher(), input_size=56, head="gap", fc="resize")
    path = save_backbone(student, tmp_path / "kt56.pt")
    # what facekd.engine.builder does with student.name=<file> and data.student_size=56
    loaded = load_backbone(path, input_size=56)
    assert loaded.input_size == 56 and loaded.head == "gap"
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_kt_prelu_teacher_to_relu_student_copies_the_rest_and_is_exact_at_zero_slopes():
    """The quantisation-friendly start: a ReLU student of a PReLU teacher (issue 18)."""
    teacher = _teacher("mobilefacenet")
    student, report = build_kt_student(teacher, input_size=112, activation="relu")
    slopes = sorted(set(teacher.state_dict()) - set(student.state_dict()))
    assert sorted(report.dropped) == slopes and len(slopes) == 33
    assert sorted(report.copied) == sorted(student.state_dict()) and "PReLU" in str(report)
    x = _faces(3, 112)
    student.eval()

    def unit(model):  # fresh nets give ~1e-5 embeddings: compare directions, not atol
        return torch.nn.functional.normalize(model(x), dim=1)

    with torch.no_grad():
        assert (unit(student) * unit(teacher)).sum(1).max() < 0.99  # slopes 0.25 matter
        for m in teacher.modules():  # PReLU with a = 0 is ReLU: then the two nets agree
            if isinstance(m, torch.nn.PReLU):
                m.weight.zero_()
        torch.testing.assert_close(unit(student), unit(teacher), rtol=0, atol=1e-5)
    with pytest.raises(TransferError, match="student keys missing in the teacher"):  # no slopes
        knowledge_transfer(build_backbone("mobilefacenet", width=0.25), student)
