"""The demo's setting: a teacher that knows more than a student can learn alone.

Real distillation pays when the teacher has seen what the student cannot: many labelled
people (an ArcFace R100 trained on MS1M) against a deployment team's few labelled people and
many unlabelled photos. The demo builds that setting on synthetic faces, after Hinton et al.
(2015, §3: scarce labels, a transfer set of unlabelled inputs, soft targets carrying the rest):

* **teacher**: MobileFaceNet width 1, every label of ``identities`` synthetic people,
  ``teacher_steps`` steps;
* **students**: MobileFaceNet width ``student_width`` (fewer FLOPs), labels for the first
  ``labelled`` people only (``data.labelled_identities``), the photos of all ``identities``
  people as the transfer set. Every student row starts from the same weights (one
  ``train.seed``) and draws the same batches (one ``data.seed``), so a difference between two
  rows is their method's;
* evaluation on pairs of *held-out* synthetic people (``identity_offset``): how well each
  model's embedding separates people nobody trained on.

Rows and what each is compared with (``BASELINE``):

* ``scratch``: ArcFace on the labelled rows of the shared batches, no teacher;
* ``scratch_labelled``: the same student on the labelled people's photos alone (every batch
  fully labelled): the stronger of the two no-teacher baselines, shown for honesty;
* ``hinton``: + soft targets at T = 4 of the teacher's ArcFace head (scales matched, s = 32);
* ``embedding``: + embedding mimic ``1 - cos(e_s, e_t)`` at weight 128 (the field's plain
  recipe and strength; at weight 8 it did not move: 0.80 vs scratch 0.82 in a full run);
* ``neuron_selection``: Luo et al. 2016: a K-wide student regresses the K teacher neurons
  selected on the labelled people (no identity loss, the paper's setting);
* ``hr_to_lr`` / ``kt_only``: Karlekar et al. 2019: the teacher's architecture at half the
  resolution, started from the teacher's weights (KT); pooled-feature transfer + ArcFace vs
  ArcFace alone from the same start;
* ``triplet_ft`` / ``triplet_fixed``: Feng et al. 2019: the trained ``scratch`` student
  fine-tuned on P x K batches of the labelled people with triplet distillation (margin F(d)
  from the teacher's distances) vs the fixed-margin triplet loss, same start, same batches.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass
class DemoSize:
    identities: int = 160  # the teacher's labelled people = the students' transfer set
    labelled: int = 16  # people whose labels the students get
    images_per_identity: int = 12
    size: int = 56
    teacher_steps: int = 200
    steps: int = 90  # every student row
    finetune_steps: int = 30  # the triplet fine-tuning rows
    batch: int = 64
    teacher_width: float = 1.0
    student_width: float = 0.35
    pairs: int = 600
    features: int = 128
    workers: int = 2  # decoding / rendering processes per run (0: in the training process)


FULL = DemoSize(identities=400, labelled=40, images_per_identity=16, size=112,
                teacher_steps=1200, steps=400, finetune_steps=100, pairs=3000)  # fmt: skip

#: row -> the row it is judged against (same start where both train from one, same batches)
BASELINE = {
    "hinton": "scratch",
    "embedding": "scratch",
    "neuron_selection": "scratch",
    "hr_to_lr": "kt_only",
    "triplet_ft": "triplet_fixed",
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def common(out: Path, s: DemoSize, name: str, steps: int) -> dict:
    """What every run shares: ArcFace s = 32, m = 0.3; the default flip; SGD, cosine decay."""
    return {
        "out_dir": str(out / name),
        "head": {"name": "arcface", "kwargs": {"scale": 32.0, "margin": 0.3}},
        "data": {
            "identities": s.identities,
            "images_per_identity": s.images_per_identity,
            "image_size": s.size,
            "batch_size": s.batch,
            "workers": s.workers,
        },
        "train": {
            "steps": steps,
            "lr": 0.1,
            "clip_grad_norm": 5.0,
            "warmup_steps": max(1, steps // 10),
            "log_every": max(1, steps // 10),
            "checkpoint_every": steps,
        },
    }


def teacher_config(out: Path, s: DemoSize) -> dict:
    arch = {"name": "mobilefacenet", "kwargs": {"width": s.teacher_width,
                                                "num_features": s.features}}  # fmt: skip
    return merge(common(out, s, "teacher", s.teacher_steps), {"student": arch})


def student_rows(out: Path, s: DemoSize) -> list[tuple[str, str, dict]]:
    """``(name, label, config)`` of every student row, in training order."""
    teacher = str(out / "teacher" / "checkpoint.pt")
    cached = {"model": teacher, "cache": str(out / "cache")}
    low = s.size // 2
    student = {"name": "mobilefacenet", "kwargs": {"width": s.student_width,
                                                   "num_features": s.features}}  # fmt: skip
    scarce = {"student": student, "data": {"labelled_identities": s.labelled}}
    base = merge(common(out, s, "", s.steps), scarce)
    k = round(0.824 * s.features)  # Luo et al.: 422 of 512 neurons kept
    kt = {"student": {"name": "mobilefacenet", "init": "kt", "init_fc": "resize",
                      "kwargs": {"width": s.teacher_width, "num_features": s.features}},
          "data": {"student_size": low}, "train": {"lr": 0.01}}  # fmt: skip
    p = min(s.labelled, s.batch // 4)
    finetune = {
        "head": None,
        "teacher": {"model": teacher, "cache": str(out / "cache_labelled")},
        "data": {"identities": s.labelled, "labelled_identities": None, "sampler": "pk",
                 "p": p, "k": 4},
        "train": {"steps": s.finetune_steps, "lr": 0.01, "warmup_steps": 1,
                  "log_every": max(1, s.finetune_steps // 10),
                  "checkpoint_every": s.finetune_steps},
    }  # fmt: skip
    rows = [
        ("scratch", "ArcFace on the labelled people, no teacher", {}),
        ("scratch_labelled", "ArcFace, the labelled people's photos only",
         {"data": {"identities": s.labelled, "labelled_identities": None}}),
        ("hinton", "+ Hinton soft targets (T=4, s=32 both)",
         {"teacher": {**cached, "head": teacher},
          "losses": [{"name": "hinton", "weight": 1.0, "kwargs": {"T": 4.0}}]}),
        ("embedding", "+ embedding mimic (1 - cos, x128)",
         {"teacher": cached, "losses": [{"name": "embedding", "weight": 128.0}]}),
        ("neuron_selection", f"neuron selection (Luo 2016): {k} neurons",
         {"teacher": cached, "head": None,
          "student": {"kwargs": {"num_features": k}},
          "losses": [{"name": "neuron_selection",
                      "kwargs": {"selection": str(out / "selection.json")}}]}),
        ("kt_only", f"teacher arch. at {low} px, KT start, ArcFace only",
         merge(kt, {"teacher": {"model": teacher}})),
        ("hr_to_lr", f"teacher arch. at {low} px, KT start + pooled transfer",
         merge(kt, {"teacher": {"model": teacher, "cache": str(out / "cache_lowres")},
                    "losses": [{"name": "pooling_transfer", "weight": 10.0}]})),
        ("triplet_fixed", "scratch fine-tuned: fixed-margin triplet",
         merge(finetune, {"losses": [{"name": "triplet_distillation",
                                      "kwargs": {"adaptive": False}}]})),
        ("triplet_ft", "scratch fine-tuned: triplet distillation F(d)",
         merge(finetune, {"losses": [{"name": "triplet_distillation"}]})),
    ]  # fmt: skip
    out_rows = []
    for name, label, over in rows:
        cfg = merge(base, merge(over, {"out_dir": str(out / name)}))
        if name.startswith("triplet"):  # the trained scratch student, as saved
            cfg["student"] = {"name": str(out / "scratch" / "student.pt")}
        out_rows.append((name, label, cfg))
    return out_rows
