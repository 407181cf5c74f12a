"""The Trainer's state on disk: an atomic checkpoint, and resuming from one.

``ResumableState`` is the part of ``facekd.engine.trainer.Trainer`` that saves everything a
killed run needs (student, head, adapters, optimizer, scheduler, scaler, RNG states, data
position, running log sums, config) and puts it back. A checkpoint whose config differs in a
key that changes training is refused, naming the keys (``config_changes``; ``RESUME_FREE``
lists the keys that may change).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from facekd.engine.seeding import _rng_state, _set_rng_state
from facekd.models.checkpoints import FORMAT as BACKBONE_FORMAT
from facekd.models.checkpoints import atomic_save
from facekd.runtime import dist

log = logging.getLogger(__name__)
FORMAT = "facekd.train/1"  # stored in checkpoints: kept when the module moved

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


class ResumableState:
    """Checkpoint and resume methods of the Trainer (which owns every attribute used here)."""

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
