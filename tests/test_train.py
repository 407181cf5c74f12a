"""Trainer + Distiller system tests on tiny CPU models: exact resume, frozen teacher, NaN stop."""

from __future__ import annotations

import copy
import csv

import pytest
import torch

from facekd.data.sampler import PKBatchSampler
from facekd.engine.distiller import Distiller
from facekd.engine.trainer import NonFiniteLossError, Trainer, TrainSettings
from facekd.losses import build_loss
from facekd.losses.base import DistillLoss
from facekd.models import build_backbone
from facekd.models.checkpoints import load_backbone


class NoisyFaces(torch.utils.data.Dataset):
    """Random tensors with a random flip per item: augmentation randomness to reproduce."""

    def __init__(self, n=48, ids=6, size=32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.labels = [i % ids for i in range(n)]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        img = self.x[i].flip(-1) if torch.rand(()) < 0.5 else self.x[i]
        return {"image": img + 0.05 * torch.randn_like(img), "label": self.labels[i], "index": i}


def _distiller(loss=None):
    torch.manual_seed(0)
    student = build_backbone("mobilefacenet", width=0.25, input_size=32)
    teacher = build_backbone("iresnet18", width=0.125, input_size=32, num_features=128)
    loss = loss or build_loss("embedding")
    return Distiller(student, losses={"embedding": loss}, teacher=teacher), teacher


def _trainer(tmp_path, steps, distiller=None, **kw):
    distiller = distiller or _distiller()[0]
    data = NoisyFaces()
    sampler = PKBatchSampler(data.labels, p=3, k=2, seed=1)
    kw = {"lr": 0.05, "log_every": 1, "checkpoint_every": 2, "progress": False, **kw}
    settings = TrainSettings(steps=steps, **kw)
    return Trainer(distiller, data, sampler, settings, tmp_path, device="cpu")


def _losses(history):
    return [(r["step"], round(r["loss"], 6)) for r in history if "loss" in r]


def test_kill_and_resume_continues_the_loss_curve_exactly(tmp_path):
    # 8 batches per epoch: 10 steps cross an epoch boundary; the kill happens mid-epoch
    full = _trainer(tmp_path / "full", 10).fit()
    _trainer(tmp_path / "cut", 10).fit(stop_at=5)  # the process ends after step 5 ...
    resumed = _trainer(tmp_path / "cut", 10)  # ... a new process resumes from the checkpoint
    assert resumed.resume()
    history = resumed.fit()
    assert _losses(history) == _losses(full)


def test_teacher_weights_and_bn_statistics_are_untouched(tmp_path):
    distiller, teacher = _distiller()
    before = copy.deepcopy(teacher.state_dict())
    _trainer(tmp_path, 3, distiller=distiller).fit()
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert "teacher" not in dict(distiller.named_modules())


def test_student_file_and_checkpoint_load_as_backbones(tmp_path):
    trainer = _trainer(tmp_path, 2)
    trainer.fit()
    for path in (tmp_path / "student.pt", tmp_path / "checkpoint.pt"):
        model = load_backbone(path)
        assert model.arch == "mobilefacenet" and model.num_features == 128
    assert (tmp_path / "log.csv").read_text().startswith("step,")


def test_log_csv_gains_columns_for_evaluation_metrics(tmp_path):
    # metrics appear only every eval_every steps, after the header was written: the header
    # grows so a csv reader finds them under their names, on the steps that computed them
    distiller = _distiller()[0]
    data = NoisyFaces()
    sampler = PKBatchSampler(data.labels, p=3, k=2, seed=1)
    settings = TrainSettings(steps=4, lr=0.05, log_every=1, eval_every=2, progress=False)
    calls = []

    def evaluate(student):
        calls.append(1)
        return {"val_acc": 0.25 * len(calls)}

    Trainer(distiller, data, sampler, settings, tmp_path, evaluate=evaluate, device="cpu").fit()
    with (tmp_path / "log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_step = {}
    for r in rows:
        by_step.setdefault(int(r["step"]), []).append(r)
    assert by_step[1][0]["eval/val_acc"] == "" and float(by_step[1][0]["loss"]) > 0
    assert float(by_step[2][0]["eval/val_acc"]) == 0.25  # eval at step 2, the final one at step 4
    assert float(by_step[4][-1]["eval/val_acc"]) == 0.5


class ExplodingLoss(DistillLoss):
    def __init__(self, at_call):
        super().__init__()
        self.calls, self.at_call = 0, at_call

    def forward(self, student, teacher, batch):
        self.calls += 1
        value = student.embedding.square().mean()
        return value * float("nan") if self.calls >= self.at_call else value


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_checkpoint(tmp_path):
    distiller, _ = _distiller(ExplodingLoss(at_call=4))
    trainer = _trainer(tmp_path, 10, distiller=distiller)
    with pytest.raises(NonFiniteLossError, match=r"step 3.*kd/embedding.*checkpoint"):
        trainer.fit()
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 2
    assert all(
        torch.isfinite(v).all()
        for v in saved["student"]["state_dict"].values()
        if v.is_floating_point()
    )


@pytest.mark.parametrize("amp", ["bf16", "none"])
def test_accumulation_clipping_amp_and_channels_last_run(tmp_path, amp):
    trainer = _trainer(
        tmp_path,
        2,
        amp=amp,
        accumulate=2,
        clip_grad_norm=1.0,
        channels_last=True,
        optimizer="adamw",
        lr=1e-3,
        warmup_steps=1,
    )
    history = trainer.fit()
    assert [r["step"] for r in history] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history)


@pytest.mark.parametrize("native", [False, True])
def test_bf16_without_native_support_warns_and_keeps_the_setting(tmp_path, monkeypatch, caplog,
                                                                  native):  # fmt: skip
    import facekd.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "bf16_support", lambda device: (native, "no bf16 here"))
    with caplog.at_level("WARNING", logger="facekd.engine.trainer"):
        trainer = _trainer(tmp_path, 1, amp="bf16")
    assert trainer.settings.amp == "bf16"
    warned = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    if native:
        assert warned == []
    else:
        assert len(warned) == 1 and "no bf16 here" in warned[0]
