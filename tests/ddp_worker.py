"""Run by tests/test_ddp.py under ``torchrun``: a few steps of distributed training.

Every rank saves its final student weights so the test can check they are identical.
Usage: ``torchrun --standalone --nproc_per_node=N tests/ddp_worker.py OUT BATCH STEPS ACCUMULATE``.
"""

import sys

import torch

from facekd.config import ExperimentConfig, load_config
from facekd.engine.builder import build_trainer
from facekd.runtime import dist


def main() -> None:
    out, batch, steps, accumulate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    cfg = load_config(
        ExperimentConfig,
        None,
        [
            f"out_dir={out}",
            "data.identities=8",
            "data.images_per_identity=4",
            "data.image_size=32",
            f"data.batch_size={batch}",
            "data.workers=0",
            "data.augment={flip_p: 0.0}",
            "student.kwargs={width: 0.25}",
            "head.name=softmax",
            f"train.steps={steps}",
            f"train.accumulate={accumulate}",
            "train.lr=0.05",
            "train.weight_decay=0.0",
            "train.momentum=0.0",
            "train.schedule=constant",
            "train.progress=false",
        ],
    )
    trainer = build_trainer(cfg)
    trainer.fit()
    student = dist.unwrap(trainer.distiller.student)
    torch.save(student.state_dict(), f"{out}/rank{dist.rank()}.pt")
    if dist.is_distributed():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
