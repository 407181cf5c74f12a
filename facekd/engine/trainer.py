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
import logging
import math
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from facekd.data.batching import collate_batch
from facekd.data.robust import ReplaceUnreadable
from facekd.engine.csv_log import append_csv_row
from facekd.engine.resume import FORMAT, ResumableState, config_changes  # noqa: F401
from facekd.engine.seeding import (  # noqa: F401 - seed_everything, seeded: re-exported
    SeededItems,
    _EpochTagged,
    seed_everything,
    seeded,
)
from facekd.engine.settings import TrainSettings, build_optimizer, lr_lambda
from facekd.runtime import bf16_support, dist, tune_cpu, worker_init
from facekd.teachers.cache_rows import WithTeacherRows

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """NaN or inf in training; the message names the step, the terms and the last checkpoint."""


class Trainer(ResumableState):
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
        if settings.amp == "bf16" and not (native := bf16_support(self.device))[0]:
            # kept as asked (results stay comparable), but say it: emulated bf16 is ~10x slower
            log.warning(
                "train.amp=bf16 on %s: %s, so autocast is emulated and far slower than float32 "
                "(about 10x on an AVX2-only CPU); set train.amp: none here",
                self.device, native[1],
            )  # fmt: skip
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
        cache = distiller.teacher_cache
        self._collate = collate_batch if cache is None else WithTeacherRows(cache)
        self.loader = torch.utils.data.DataLoader(
            SeededItems(readable, settings.seed),
            batch_sampler=self._tagged,
            num_workers=num_workers,
            collate_fn=self._collate,
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
        append_csv_row(self.out_dir / "log.csv", row)
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
        self._start()
        writer = self._open_writer()
        bar = tqdm(total=s.steps, initial=self.step, desc="train", unit="step",
                   disable=not (s.progress and dist.is_main()))  # fmt: skip
        self._micro, self._tick = 0, time.perf_counter()
        for batch in self._batches(stop_at):
            self._forward_backward(batch)
            if self._micro % s.accumulate:  # gradient accumulation: no optimizer step yet
                continue
            self._optimizer_step()
            bar.update(1)
            due = s.eval_every and self.step % s.eval_every == 0 and self.step < s.steps
            metrics = self._run_eval() if due else {}
            if self.step % s.log_every == 0 or self.step == s.steps or metrics:
                self._log_row(len(batch), metrics, writer, bar)
            if self.step % s.checkpoint_every == 0 or self.step in (s.steps, stop_at):
                self.save_checkpoint()
        bar.close()
        return self._finish(writer)

    def _start(self) -> None:
        """Once per Trainer: the dry run sizing the adapters; then a pending resume."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not self._prepared:  # a second fit() keeps optimizer, scheduler and adapters
            dataset = self.loader.dataset.dataset
            self._prepare(self._collate([dataset[i] for i in range(min(2, len(dataset)))]))
            # the dry run may draw random numbers (adapters); every method then starts its
            # first step from the same generator state
            seed_everything(self.settings.seed + dist.rank())
        if self._pending_resume is not None:
            self._apply_resume(self._pending_resume)
            self._pending_resume = None
        self.distiller.train()

    def _open_writer(self):
        if not dist.is_main():
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out_dir / "tensorboard"))

    def _batches(self, stop_at: int):
        """Batches across epochs, continuing mid-epoch after a pause or a resume; stops once
        ``self.step`` reaches ``stop_at`` (checked after the consumer handled each batch)."""
        while self.step < stop_at:
            self.sampler.set_epoch(self.epoch)
            self._tagged.epoch = self.epoch
            self._tagged.skip = self.consumed
            for batch in self.loader:
                yield batch
                if self.step >= stop_at:
                    return
            self.epoch, self.consumed = self.epoch + 1, 0

    def _forward_backward(self, batch) -> None:
        """One micro-step: loss terms, finite check, scaled backward; the terms stay tensors
        (summed on the device, read back only when a row is logged)."""
        s = self.settings
        batch = batch.to(self.device, non_blocking=True)
        if s.channels_last:
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        last = (self._micro + 1) % s.accumulate == 0
        # DDP all-reduces gradients on every backward unless told not to: only the last
        # micro-step of an accumulation window needs the reduction
        no_sync = getattr(self.model, "no_sync", None)
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with self._autocast():
                terms = self.model(batch)
            self._check_finite(terms)
            self.scaler.scale(terms["loss"] / s.accumulate).backward()
        self.consumed += 1
        for k, v in terms.items():
            v = v.detach().float()
            self._running[k] = self._running[k] + v if k in self._running else v
        self._running_count += 1
        self._micro += 1

    def _optimizer_step(self) -> None:
        s = self.settings
        self.scaler.unscale_(self.optimizer)
        if s.clip_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.distiller.parameters(), s.clip_grad_norm)
            if not torch.isfinite(norm) and s.amp != "fp16":
                self._check_finite({"grad_norm": norm})
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    def _log_row(self, batch_size: int, metrics: dict, writer, bar) -> None:
        """Means of the running terms since the last row, throughput, evaluation metrics."""
        elapsed = time.perf_counter() - self._tick
        row = {"step": self.step, "epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        count = max(self._running_count, 1)
        row.update({k: float(v) / count for k, v in self._running.items()})
        row["img_per_s"] = self._micro * batch_size * dist.world_size() / max(elapsed, 1e-9)
        row.update(metrics)
        self._log(row, writer)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        self._running.clear()
        self._running_count, self._micro, self._tick = 0, 0, time.perf_counter()

    def _finish(self, writer) -> list[dict]:
        """Paused: close the writer; done: final evaluation, checkpoint, the student alone."""
        if self.step >= self.settings.steps:
            final = self._run_eval()
            if final:
                self._log({"step": self.step, "epoch": self.epoch, **final}, writer)
                self.save_checkpoint()
        if writer is not None:
            writer.close()
        if self.step >= self.settings.steps:
            self.save_student()
        return self.history

    def save_student(self) -> Path | None:
        """The trained student alone (facekd backbone format, no head, no adapters)."""
        if not dist.is_main():
            return None
        from facekd.models.checkpoints import save_backbone

        return save_backbone(dist.unwrap(self.distiller.student), self.out_dir / "student.pt")
