"""Every registered distillation loss honours the contract (DESIGN.md, "Tests")."""

from __future__ import annotations

import copy

import pytest
import torch

from facekd.engine.distiller import Distiller
from facekd.losses import LOSSES, build_loss
from facekd.models import build_backbone, build_head
from facekd.types import Batch

#: constructor keywords a loss cannot do without
REQUIRED_KWARGS = {"neuron_selection": {"indices": list(range(0, 128, 2))}}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_registered_loss_trains_the_student_and_never_the_teacher(name):
    torch.manual_seed(0)
    teacher = build_backbone("iresnet18", width=0.125, input_size=32, num_features=128).eval()
    teacher_head = build_head("arcface", num_classes=4, embedding_size=128)
    loss = build_loss(name, **REQUIRED_KWARGS.get(name, {}))
    # the student a loss asks for (neuron selection: a K-wide embedding), as the builder does
    student = build_backbone(
        "mobilefacenet", width=0.25, input_size=32, **loss.student_kwargs()
    ).train()
    distiller = Distiller(
        student,
        head=build_head("arcface", num_classes=4, embedding_size=student.num_features),
        losses={name: loss},
        teacher=teacher,
        teacher_head=teacher_head,
        ce_weight=0.0,
    )
    batch = Batch(
        torch.randn(8, 3, 32, 32), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), index=torch.arange(8)
    )
    distiller.prepare(batch)
    before = copy.deepcopy(teacher.state_dict())
    terms = distiller(batch)
    value = terms[f"kd/{name}"]
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training
