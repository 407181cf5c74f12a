"""Cost of one distillation training step, measured side by side in one run.

Three steps of the same student (forward + backward + SGD update) on the same batches:

* ``student``: ArcFace identity loss only (the baseline student);
* ``cached``: identity loss + embedding/pooled distillation from a ``TeacherCache``;
* ``online``: the same losses with the teacher run online (fp32, then channels_last + bf16
  for the teacher only; the student trains in fp32 in every variant).

Prints median step times and the ratios cached/student (target <= 1.15) and online/student,
and writes them as JSON. Measurements are interleaved round by round so machine noise hits
every variant alike.

    .venv/bin/python benchmarks/bench_distill_step.py --teacher iresnet50 --student mobilefacenet
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from facekd.data.batching import collate_batch
from facekd.data.synthetic import SyntheticFaces
from facekd.engine.distiller import Distiller
from facekd.losses import build_loss
from facekd.models import build_backbone, build_head
from facekd.teachers.cache import build_teacher_cache


def make_variant(student_name, teacher, cache, size, classes, online_bf16=False, dim=512):
    torch.manual_seed(0)
    student = build_backbone(student_name, input_size=size, num_features=dim).train()
    head = build_head("arcface", num_classes=classes, embedding_size=student.num_features)
    losses = {"embedding": build_loss("embedding")}
    if cache is None and teacher is None:
        distiller = Distiller(student, head=head)
    elif cache is not None:
        distiller = Distiller(student, head=head, losses=losses, teacher_cache=cache)
    else:
        distiller = Distiller(
            student, head=head, losses=losses, teacher=teacher, teacher_bf16=online_bf16
        )
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.01, momentum=0.9)

    def step(batch):
        loss = distiller(batch)["loss"]  # the student always trains in fp32 here
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="iresnet50")
    parser.add_argument("--student", default="mobilefacenet")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default="benchmarks/results/distill_step.json")
    args = parser.parse_args(argv)

    data = SyntheticFaces(16, 4, size=args.size, seed=0)
    batches = [
        collate_batch([data[i] for i in range(j, j + args.batch)])
        for j in (0, 32)[: 1 + (len(data) >= 64)]
    ]
    torch.manual_seed(0)
    teacher = build_backbone(args.teacher, input_size=args.size).eval()
    teacher_cl = (
        build_backbone(args.teacher, input_size=args.size)
        .eval()
        .to(memory_format=torch.channels_last)
    )
    teacher_cl.load_state_dict(teacher.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        # float32: a random-init iResNet's outputs exceed float16's range (trained ones do not)
        cache = build_teacher_cache(
            teacher, data, Path(tmp) / "cache", f"bench{args.size}", batch_size=16, dtype="float32"
        )
        variants = {
            "student": make_variant(args.student, None, None, args.size, data.num_classes),
            "cached": make_variant(args.student, teacher, cache, args.size, data.num_classes),
            "online_fp32": make_variant(args.student, teacher, None, args.size, data.num_classes),
            "online_bf16_cl": make_variant(
                args.student, teacher_cl, None, args.size, data.num_classes, online_bf16=True
            ),
        }
        times = {name: [] for name in variants}
        for step in variants.values():  # warm-up
            step(batches[0])
        for r in range(args.rounds):
            for name, step in variants.items():
                t0 = time.perf_counter()
                step(batches[r % len(batches)])
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "teacher": args.teacher,
        "student": args.student,
        "input_size": args.size,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "median_step_s": med,
        "ratio_cached_vs_student": med["cached"] / med["student"],
        "ratio_online_fp32_vs_student": med["online_fp32"] / med["student"],
        "ratio_online_bf16_cl_vs_student": med["online_bf16_cl"] / med["student"],
    }
    for k, v in med.items():
        print(f"{k:>16}: {v * 1000:8.1f} ms/step  ({v / med['student']:.2f}x student)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
