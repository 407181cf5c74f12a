"""The contract for the general family (Hinton, FitNets, AT, FSP, DarkRank, RKD) on tiny real
backbones: default stage pairs and adapters fit iResNet -> MobileFaceNet, every term is a finite
scalar, gradients reach the student and adapters only, and the teacher is left untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from facekd.engine.distiller import Distiller
from facekd.losses.attention import AttentionTransfer
from facekd.losses.fitnets import FitNets
from facekd.losses.fsp import FSP
from facekd.losses.hinton import HintonKD
from facekd.losses.relational import RKD, DarkRank
from facekd.models import ArcFace
from facekd.types import Batch

FAMILY = {
    "hinton": lambda: HintonKD(T=4.0),
    "hinton_fusion": lambda: HintonKD(T=20.0, mode="seed_fusion"),
    "fitnets": lambda: FitNets(),
    "fitnets_paper": lambda: FitNets(regressor="conv_valid", mode="paper"),
    "attention": lambda: AttentionTransfer(),
    "attention_paper": lambda: AttentionTransfer(mode="paper"),
    "fsp": lambda: FSP(),
    "fsp_code": lambda: FSP(mode="code", pool="avg"),
    "darkrank": lambda: DarkRank(),
    "darkrank_soft": lambda: DarkRank(variant="soft", metric="cos"),
    "rkd": lambda: RKD(),
}
NUM_CLASSES = 10


def _batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 0, 3, 3, 7, -1][:b])
    return Batch(images=torch.randn(b, 3, 32, 32, generator=g), labels=labels)


def _distiller(name, student, teacher):
    return Distiller(
        student,
        head=ArcFace(NUM_CLASSES, student.num_features, seed=1),
        losses={name: FAMILY[name]()},
        teacher=teacher,
        teacher_head=ArcFace(NUM_CLASSES, teacher.num_features, seed=2),
        ce_weight=0.0,  # the distillation term alone must drive the student
    )


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_family_contract_on_tiny_backbones(name, tiny_student, tiny_teacher):
    distiller = _distiller(name, tiny_student, tiny_teacher)
    before = copy.deepcopy(tiny_teacher.state_dict())
    batch = _batch()
    distiller.prepare(batch)
    distiller.train()
    terms = distiller(batch)
    term = terms[f"kd/{name}"]
    assert term.dim() == 0 and torch.isfinite(term), term
    assert term.item() > 0
    terms["loss"].backward()
    body = [p for n, p in tiny_student.named_parameters() if n.startswith(("layers.0", "conv1"))]
    assert body and all(p.grad is not None and p.grad.abs().sum() > 0 for p in body), name
    for p in distiller.losses.parameters():  # adapters / regressors are trained
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert all(p.grad is None and not p.requires_grad for p in tiny_teacher.parameters())
    assert all(torch.equal(v, tiny_teacher.state_dict()[k]) for k, v in before.items())
    assert not tiny_teacher.training


def test_default_adapters_on_tiny_backbones(tiny_student, tiny_teacher):
    """iResNet stages (8, 8, 16, 32, 64 ch) vs MobileFaceNet stages (16, 16, 32, 32 ch) at 32 px:
    the same pattern as iResNet-100 -> mbf at 112 px (METHODS 4.4)."""
    batch = _batch()
    with torch.no_grad():
        s = tiny_student.eval().forward_features(batch.images)
        t = tiny_teacher.eval().forward_features(batch.images)
    fitnets = FitNets()
    fitnets.build(s, t)
    assert tuple(fitnets.regressor[0].weight.shape) == (32, 32, 1, 1)
    assert s.stages[2].shape[-2:] == t.stages[3].shape[-2:]  # layers[5] and layer3: same size
    fsp = FSP()
    fsp.build(s, t)
    assert {k: tuple(m[0].weight.shape[:2]) for k, m in fsp.adapters.items()} == {
        "p0_in": (8, 16),
        "p2_out": (64, 32),
    }
    at = AttentionTransfer()
    at.build(s, t)
    for ti, si in at.pairs:
        assert s.stages[si].shape[-2:] == t.stages[ti].shape[-2:]


def test_teacher_outputs_are_not_modified(tiny_student, tiny_teacher):
    batch = _batch()
    with torch.no_grad():
        t = tiny_teacher.eval().forward_features(batch.images)
        t.logits = torch.randn(6, NUM_CLASSES)
    snapshot = [x.clone() for x in (t.embedding, t.logits, *t.stages)]
    s = tiny_student.train().forward_features(batch.images)
    s.logits = torch.randn(6, NUM_CLASSES, requires_grad=True)
    for name, make in FAMILY.items():
        loss = make()
        loss.build(s, t)
        loss(s, t, batch).backward(retain_graph=True)
        after = [t.embedding, t.logits, *t.stages]
        assert all(torch.equal(a, b) for a, b in zip(snapshot, after, strict=True)), name


@pytest.mark.parametrize(
    "make",
    [
        lambda: HintonKD(),
        lambda: AttentionTransfer(pairs=[(0, 0), (2, 2), (4, 4)]),
        lambda: AttentionTransfer(pairs=[(1, 1), (3, 3)], mode="paper"),
        lambda: FSP(pairs=[((0, 1), (0, 1)), ((3, 4), (3, 4))]),
        lambda: DarkRank(variant="soft"),
        lambda: RKD(),
    ],
)
def test_zero_when_student_equals_teacher(make, tiny_teacher):
    """Where the formula says so: same network, same inputs -> 0 (FSP builds no adapters)."""
    batch = _batch()
    with torch.no_grad():
        out = tiny_teacher.eval().forward_features(batch.images)
        out.logits = ArcFace(NUM_CLASSES, tiny_teacher.num_features)(out.embedding).logits
    twin = copy.deepcopy(out)
    loss = make()
    loss.build(out, twin)
    assert len(list(loss.parameters())) == 0
    assert loss(out, twin, batch).abs().item() < 1e-6


@pytest.mark.slow
def test_two_stage_schedule_through_configs(tmp_path):
    """FitNets stage 1 (hint only, ce_weight 0) -> stage 2 from stage 1's student.pt, as the
    FitNets docstring describes; YAML-style kwargs (lists) reach the losses."""
    from facekd.config import ExperimentConfig, load_config
    from facekd.engine.builder import build_trainer
    from facekd.models.checkpoints import load_backbone

    tiny = [
        "data.identities=4",
        "data.images_per_identity=2",
        "data.image_size=32",
        "data.batch_size=4",
        "data.workers=0",
        "train.steps=2",
        "train.progress=false",
        "student.kwargs={width: 0.25}",
        "teacher.model=iresnet18",
        "teacher.kwargs={width: 0.125, input_size: 32}",
    ]
    stage1 = load_config(
        ExperimentConfig,
        None,
        tiny
        + [
            f"out_dir={tmp_path / 's1'}",
            "ce_weight=0",
            "losses=[{name: fitnets, weight: 1, kwargs: {teacher_stage: 3, student_stage: 2}}]",
        ],
    )
    trainer = build_trainer(stage1)
    hint = trainer.distiller.losses["fitnets"]
    assert isinstance(hint, FitNets) and (hint.teacher_stage, hint.student_stage) == (3, 2)
    history = trainer.fit()
    assert all("kd/fitnets" in r for r in history)
    # ce_weight 0: the hint alone drives stage 1
    assert all(r["loss"] == pytest.approx(r["kd/fitnets"], rel=1e-5) for r in history)
    adapters = torch.load(tmp_path / "s1" / "checkpoint.pt", weights_only=True)["adapters"]
    assert any(k.startswith("fitnets.regressor") for k in adapters)
    stage2 = load_config(
        ExperimentConfig,
        None,
        tiny
        + [
            f"out_dir={tmp_path / 's2'}",
            f"student.name={tmp_path / 's1' / 'student.pt'}",
            "losses=[{name: attention, weight: 1000, kwargs: {pairs: [[1, 0], [2, 1]]}},"
            " {name: fsp, weight: 1, kwargs: {pairs: [[[1, 2], [0, 1]]]}}]",
        ],
    )
    trainer = build_trainer(stage2)
    # stage 2 starts from exactly the weights stage 1 saved
    stage1_student = load_backbone(tmp_path / "s1" / "student.pt").state_dict()
    start = trainer.distiller.student.state_dict()
    assert stage1_student.keys() == start.keys()
    assert all(torch.equal(start[k], v) for k, v in stage1_student.items())
    at, fsp = trainer.distiller.losses["attention"], trainer.distiller.losses["fsp"]
    assert isinstance(at, AttentionTransfer) and at.pairs == ((1, 0), (2, 1))
    assert isinstance(fsp, FSP) and fsp.pairs == (((1, 2), (0, 1)),)
    assert trainer.distiller.weights == {"attention": 1000.0, "fsp": 1.0}
    history = trainer.fit()
    assert all({"ce", "kd/attention", "kd/fsp"} <= set(r) for r in history)
