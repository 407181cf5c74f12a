"""torchrun worker for tests/test_harness_ddp.py (2 gloo ranks): MODE OUT_DIR.

``cache``: every rank calls ``build_teacher_cache`` (flip views) with a teacher that counts the
images it sees into ``OUT_DIR/count_rank{r}.txt``. ``nan``: a Trainer whose loss turns NaN on
rank 1 at its second step; each rank writes what stopped it to ``OUT_DIR/rank{r}.txt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from facekd.data.sampler import ShuffledBatchSampler
from facekd.data.synthetic import SyntheticFaces
from facekd.engine.distiller import Distiller
from facekd.engine.settings import TrainSettings
from facekd.engine.trainer import NonFiniteLossError, Trainer
from facekd.models import build_backbone, build_head
from facekd.runtime import dist
from facekd.teachers.cache import build_teacher_cache, fingerprint_module


class CountingTeacher(torch.nn.Module):
    def __init__(self, path: Path) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = build_backbone("mobilefacenet", width=0.25, input_size=32).eval()
        self.path, self.seen = path, 0

    def fingerprint(self) -> str:
        return fingerprint_module(self.inner)

    def forward_features(self, x):
        self.seen += len(x)
        self.path.write_text(str(self.seen))
        return self.inner.forward_features(x)


class NanOnRank1(Distiller):
    calls = 0

    def forward(self, batch):
        terms = super().forward(batch)
        self.calls += 1
        if dist.rank() == 1 and self.calls >= 2:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


def main(mode: str, out: Path) -> None:
    dist.init_from_env()
    out.mkdir(parents=True, exist_ok=True)
    r = dist.rank()
    if mode == "cache":
        teacher = CountingTeacher(out / f"count_rank{r}.txt")
        (out / f"count_rank{r}.txt").write_text("0")
        data = SyntheticFaces(3, 4, size=32)
        cache = build_teacher_cache(
            teacher, data, out / "cache", "p", dtype="float32", flip=True, progress=False,
            batch_size=4,
        )  # fmt: skip
        (out / f"opened_rank{r}.txt").write_text(str(len(cache)))
        return
    torch.manual_seed(0)
    student = build_backbone("mobilefacenet", width=0.25, input_size=32)
    data = SyntheticFaces(4, 4, size=32)
    distiller = NanOnRank1(student, head=build_head("arcface", num_classes=4, embedding_size=128))
    settings = TrainSettings(steps=5, lr=0.01, progress=False, log_every=1)
    sampler = ShuffledBatchSampler(len(data), 4, seed=0)
    trainer = Trainer(distiller, data, sampler, settings, out / "run", device="cpu")
    try:
        trainer.fit()
        (out / f"rank{r}.txt").write_text("finished")
    except NonFiniteLossError as err:
        (out / f"rank{r}.txt").write_text(str(err))


if __name__ == "__main__":
    try:
        main(sys.argv[1], Path(sys.argv[2]))
    finally:  # leave together: a rank exiting with gloo threads alive aborts (SIGABRT)
        dist.shutdown()
