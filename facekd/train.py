"""The one Trainer: teacher training, baseline students and every distillation method.

It trains a ``Distiller`` (whatever its losses) and owns everything about *how*: device,
autocast (bf16 / fp16, a grad scaler only for fp16), channels_last, gradient accumulation and
clipping, warm-up + cosine / poly / constant learning rate, SGD / AdamW, DDP under torchrun,
periodic evaluation, TensorBoard + CSV logs, a tqdm bar, atomic checkpoints, exact resume and
non-finite-loss detection.

Exact resume: a checkpoint holds the student, head and loss adapters, the optimizer, the
scheduler, the scaler, every RNG state and the batch sampler's position, and the data pipeline
derives each item's augmentation randomness from (seed, epoch, index) (``SeededItems``), so a
run killed at any point and resumed logs the same loss curve as one never interrupted, running
log averages included. A resumed run must be the same experiment: ``resume`` refuses a
checkpoint whose configuration differs in any key that changes training (naming the keys);
extending ``train.steps`` needs ``allow_steps_change=True`` (``facekd train --extend-steps``).
A second ``fit()`` on the same Trainer continues where the first stopped (same optimizer,
scheduler, scaler and loss adapters).

Unreadable training images (``facekd.data.robust``) are reported in ``out_dir/unreadable.txt``
and replaced by the next readable item, so one bad file never kills a run, or its resumption.
A non-finite loss stops the run on *every* rank (the check is all-reduced), with the message.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from facekd import dist
from facekd.data.batching import collate_batch
from facekd.data.robust import ReplaceUnreadable
from facekd.models.checkpoints import FORMAT as BACKBONE_FORMAT
from facekd.models.checkpoints import atomic_save
from facekd.runtime import tune_cpu, worker_init
from facekd.train_settings import TrainSettings, build_optimizer, lr_lambda

log = logging.getLogger(__name__)
FORMAT = "facekd.train/1"

#: configuration keys a resumed run may change: they do not change what is trained
RESUME_FREE = (
    "out_dir",
    "eval.",
    "data.workers",
    "teacher.cache",  # the cache is checked by its own key (teacher, data, preprocessing)
    "train.progress",
    "train.log_every",
    "train.checkpoint_every",
    "train.eval_every",
)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not key.endswith("kwargs"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(saved: dict, current: dict) -> dict[str, tuple]:
    """``{dotted key: (saved, current)}`` for keys that differ and matter to training."""
    a, b = _flatten(saved), _flatten(current)

    def free(key: str) -> bool:  # "eval." frees a section, "data.workers" one key
        return any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUME_FREE)

    return {
        k: (a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and not free(k)
    }


class NonFiniteLossError(RuntimeError):
    """NaN or inf in training; the message names the step, the terms and the last checkpoint."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block under torch / numpy / random seeded with ``seed``, leaving the caller's
    generators as they were: what is built inside does not depend on what was built before
    (the experiment builder builds the student and the teacher under separate seeds)."""
    saved = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])


def _rng_state() -> dict:
    # numpy's key array goes in as a tensor so checkpoints load with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SeededItems(torch.utils.data.Dataset):
    """Wraps a data set so item ``(epoch, i)`` is produced under RNGs seeded by (seed, epoch, i).

    Random augmentation then depends only on *which* item is drawn, not on worker processes or
    on when the iterator was created, which is what makes mid-epoch resume exact.
    """

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, i = key
        item_seed = (self.seed * 1_000_003 + epoch * 7_919 + i) % 2**31
        saved = random.getstate(), np.random.get_state()  # leave the caller's RNGs as they were
        random.seed(item_seed)
        np.random.seed(item_seed)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed)
                return self.dataset[i]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])


class _EpochTagged:
    """Batch sampler adaptor: yields ``[(epoch, i), ...]`` for ``SeededItems``.

    The Trainer, not the sampler, counts the batches it has consumed (DataLoader workers
    prefetch, so a sampler's own position runs ahead); on resume the first ``skip`` batches of
    the epoch are drawn and dropped, which only needs the sampler to be deterministic per epoch.
    """

    def __init__(self, batch_sampler) -> None:
        self.batch_sampler = batch_sampler
        self.epoch = 0
        self.skip = 0

    def __len__(self) -> int:
        return len(self.batch_sampler) - self.skip

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for j, batch in enumerate(self.batch_sampler):
            if j >= skip:
                yield [(self.epoch, int(i)) for i in batch]


class Trainer:
    """Train a ``Distiller`` for ``settings.steps`` optimizer steps.

    Args:
        distiller: the model to train (its teacher stays frozen and outside DDP).
        dataset: items per ``facekd.data.batching``.
        batch_sampler: yields lists of indices per batch; must be deterministic given
            ``set_epoch(epoch)`` (facekd samplers are), which is all exact resume needs.
        settings: ``TrainSettings``.
        out_dir: checkpoints, logs, the final student.
        evaluate: optional ``f(student) -> {metric: value}`` run every ``eval_every`` steps
            and at the end (rank 0).
        config: resolved configuration saved inside checkpoints (a plain dict).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        distiller,
        dataset,
        batch_sampler,
        settings: TrainSettings,
        out_dir,
        evaluate=None,
        config: dict | None = None,
        num_workers: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        tune_cpu()  # allocator + threads (facekd.runtime; FACEKD_CPU_TUNING=0 turns it off)
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.device = torch.device(device) if device is not None else dist.init_from_env()
        seed_everything(settings.seed + dist.rank())
        self.distiller = distiller.to(self.device)
        if distiller.teacher is not None:
            distiller.teacher.to(self.device)
        if distiller.teacher_head is not None:
            distiller.teacher_head.to(self.device)
        if settings.channels_last:
            self.distiller.to(memory_format=torch.channels_last)
            if distiller.teacher is not None:
                distiller.teacher.to(memory_format=torch.channels_last)
        self.sampler = batch_sampler
        self._tagged = _EpochTagged(batch_sampler)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        readable = ReplaceUnreadable(dataset, report=self.out_dir / "unreadable.txt")
        self.loader = torch.utils.data.DataLoader(
            SeededItems(readable, settings.seed),
            batch_sampler=self._tagged,
            num_workers=num_workers,
            collate_fn=collate_batch,
            persistent_workers=False,
            worker_init_fn=worker_init,  # one thread per decoding worker, no OpenCV pool
        )
        self.evaluate = evaluate
        self.config = config or {}
        self.step = 0
        self.epoch = 0
        self.consumed = 0  # batches of the current epoch already trained on
        self.history: list[dict] = []
        self._running: dict[str, torch.Tensor] = {}  # sums of the terms since the last log row
        self._running_count = 0
        self._pending_resume = None
        self._prepared = False

    # -- construction of the pieces that depend on the dry run ---------------------------
    def _prepare(self, first_batch) -> None:
        self.distiller.prepare(first_batch.to(self.device))  # size loss adapters
        self.distiller.to(self.device)
        self.optimizer = build_optimizer(self.distiller.parameters(), self.settings)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.settings))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.settings.amp == "fp16")
        self.model = self.distiller
        if dist.world_size() > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.distiller,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        self._prepared = True

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def state_dict(self) -> dict:
        student = dist.unwrap(self.distiller.student)
        return {
            "format": FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "consumed": self.consumed,
            "student": {
                "format": BACKBONE_FORMAT,
                "arch": getattr(student, "arch", ""),
                "arch_kwargs": getattr(student, "arch_kwargs", {}),
                "state_dict": student.state_dict(),
            },
            "head": None if self.distiller.head is None else self.distiller.head.state_dict(),
            "adapters": self.distiller.adapter_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "config": self.config,
            "history": self.history,
            "running": {k: v.detach().cpu() for k, v in self._running.items()},
            "running_count": self._running_count,
        }

    def save_checkpoint(self) -> Path | None:
        if not dist.is_main():
            return None
        return atomic_save(self.state_dict(), self.checkpoint_path)

    def resume(self, path: str | Path | None = None, allow_steps_change: bool = False) -> bool:
        """Load ``path`` (default: ``out_dir/checkpoint.pt``) if it exists; True when resumed.

        Refuses (``ValueError``, naming the keys) a checkpoint whose configuration differs
        from this Trainer's in a key that changes training (all but ``RESUME_FREE``);
        ``train.steps`` may change only with ``allow_steps_change`` (extending a run).
        """
        path = Path(path) if path is not None else self.checkpoint_path
        if not path.exists():
            return False
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != FORMAT:
            raise ValueError(f"{path} is not a facekd training checkpoint")
        if self.config and ckpt.get("config"):
            changes = config_changes(ckpt["config"], self.config)
            if allow_steps_change:
                changes.pop("train.steps", None)
            if changes:
                listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
                hint = (
                    " (to train longer, pass --extend-steps / allow_steps_change=True)"
                    if "train.steps" in changes
                    else ""
                )
                raise ValueError(
                    f"cannot resume {path}: the configuration changed in {sorted(changes)} "
                    f"({listed}){hint}; resume with the saved config "
                    f"({self.out_dir / 'config.yaml'}), or start afresh (--no-resume or "
                    "another out_dir)"
                )
        self._pending_resume = ckpt
        return True

    def _apply_resume(self, ckpt: dict) -> None:
        dist.unwrap(self.distiller.student).load_state_dict(ckpt["student"]["state_dict"])
        if self.distiller.head is not None:
            self.distiller.head.load_state_dict(ckpt["head"])
        self.distiller.losses.load_state_dict(ckpt["adapters"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.consumed = self._tagged.skip = ckpt["consumed"]
        self.step, self.epoch, self.history = ckpt["step"], ckpt["epoch"], ckpt["history"]
        self._running = dict(ckpt.get("running", {}))
        self._running_count = int(ckpt.get("running_count", 0))
        _set_rng_state(ckpt["rng"])
        log.info("resumed from step %d (epoch %d)", self.step, self.epoch)

    # -- the loop --------------------------------------------------------------------------
    def _autocast(self):
        amp = self.settings.amp
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        """Raise ``NonFiniteLossError`` on every rank when any rank has a NaN / inf term: one
        host sync per micro-step (the flags of all ranks are all-reduced first, so a rank
        never waits in the gradient all-reduce for a rank that stopped)."""
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        flags = torch.zeros(dist.world_size(), device=values.device)
        flags[dist.rank()] = float(not bool(torch.isfinite(values).all()))
        if dist.is_distributed():
            torch.distributed.all_reduce(flags)
        if not flags.any():
            return
        values = {k: float(v.detach()) for k, v in terms.items()}
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        ranks = flags.nonzero().flatten().tolist()
        where = f" on rank(s) {ranks} of {dist.world_size()}" if dist.world_size() > 1 else ""
        last = self.checkpoint_path if self.checkpoint_path.exists() else "none yet"
        raise NonFiniteLossError(
            f"non-finite loss at step {self.step}{where}: {bad or '(finite on this rank)'} "
            f"(all terms here: {values}). Training stopped; the last good checkpoint is "
            f"{last}. Lower the learning rate, enable clip_grad_norm, or use bf16 instead of "
            "fp16."
        )

    def _log(self, row: dict, writer) -> None:
        self.history.append(row)
        if not dist.is_main():
            return
        path = self.out_dir / "log.csv"
        fields = list(row)
        new = not path.exists()
        if not new:
            with path.open() as f:
                fields = next(csv.reader(f))
            fields += [k for k in row if k not in fields]
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, row["step"])

    def _run_eval(self) -> dict:
        if self.evaluate is None or not dist.is_main():
            return {}
        student = dist.unwrap(self.distiller.student)
        was = student.training
        student.eval()
        with torch.no_grad(), self._autocast():
            metrics = {f"eval/{k}": float(v) for k, v in self.evaluate(student).items()}
        student.train(was)
        return metrics

    def fit(self, stop_at: int | None = None) -> list[dict]:
        """Train until ``settings.steps`` (or pause after step ``stop_at``, checkpointed, so a
        later ``fit()`` on this Trainer, or ``resume(); fit()`` on a new one, continues);
        returns the logged history."""
        s = self.settings
        stop_at = s.steps if stop_at is None else min(stop_at, s.steps)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not self._prepared:  # once: a second fit() keeps optimizer, scheduler and adapters
            dataset = self.loader.dataset.dataset
            self._prepare(collate_batch([dataset[i] for i in range(min(2, len(dataset)))]))
            # the dry run may draw random numbers (adapters); every method then starts its
            # first step from the same generator state
            seed_everything(s.seed + dist.rank())
        if self._pending_resume is not None:
            self._apply_resume(self._pending_resume)
            self._pending_resume = None
        writer = None
        if dist.is_main():
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        self.distiller.train()
        bar = tqdm(
            total=s.steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (s.progress and dist.is_main()),
        )
        sums, micro, tick = self._running, 0, time.perf_counter()
        while self.step < stop_at:
            self.sampler.set_epoch(self.epoch)
            self._tagged.epoch = self.epoch
            self._tagged.skip = self.consumed  # continue mid-epoch after a pause or a resume
            for batch in self.loader:
                batch = batch.to(self.device, non_blocking=True)
                if s.channels_last:
                    batch.images = batch.images.contiguous(memory_format=torch.channels_last)
                with self._autocast():
                    terms = self.model(batch)
                self._check_finite(terms)
                self.scaler.scale(terms["loss"] / s.accumulate).backward()
                self.consumed += 1
                for k, v in terms.items():  # tensors: read back only when a row is logged
                    v = v.detach().float()
                    sums[k] = sums[k] + v if k in sums else v
                self._running_count += 1
                micro += 1
                if micro % s.accumulate:
                    continue
                self.scaler.unscale_(self.optimizer)
                if s.clip_grad_norm > 0:
                    norm = torch.nn.utils.clip_grad_norm_(
                        self.distiller.parameters(), s.clip_grad_norm
                    )
                    if not torch.isfinite(norm) and s.amp != "fp16":
                        self._check_finite({"grad_norm": norm})
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1
                bar.update(1)
                metrics = {}
                if s.eval_every and self.step % s.eval_every == 0 and self.step < s.steps:
                    metrics = self._run_eval()
                if self.step % s.log_every == 0 or self.step == s.steps or metrics:
                    elapsed = time.perf_counter() - tick
                    row = {
                        "step": self.step,
                        "epoch": self.epoch,
                        "lr": self.optimizer.param_groups[0]["lr"],
                    }
                    count = max(self._running_count, 1)
                    row.update({k: float(v) / count for k, v in sums.items()})
                    row["img_per_s"] = micro * len(batch) * dist.world_size() / max(elapsed, 1e-9)
                    row.update(metrics)
                    self._log(row, writer)
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                    sums.clear()
                    self._running_count, micro, tick = 0, 0, time.perf_counter()
                if self.step % s.checkpoint_every == 0 or self.step in (s.steps, stop_at):
                    self.save_checkpoint()
                if self.step >= stop_at:
                    break
            else:
                self.epoch, self.consumed = self.epoch + 1, 0
                continue
            break
        bar.close()
        if self.step < s.steps:  # paused: the run goes on after resume()
            if writer is not None:
                writer.close()
            return self.history
        final = self._run_eval()
        if final:
            self._log({"step": self.step, "epoch": self.epoch, **final}, writer)
            self.save_checkpoint()
        if writer is not None:
            writer.close()
        self.save_student()
        return self.history

    def save_student(self) -> Path | None:
        """The trained student alone (facekd backbone format, no head, no adapters)."""
        if not dist.is_main():
            return None
        from facekd.models.checkpoints import save_backbone

        return save_backbone(dist.unwrap(self.distiller.student), self.out_dir / "student.pt")
