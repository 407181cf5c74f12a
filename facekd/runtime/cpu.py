"""CPU runtime tuning for facekd's own processes: the allocator and the thread count.

``tune_cpu()`` is called by facekd's entry points (the ``facekd`` CLI, the benchmark scripts)
and by its default library paths (``extract_embeddings``, ``facekd.load(...).embed``); it
does nothing at ``import facekd``. It acts once per process (later calls return the first
report) and logs one line (logger ``facekd.runtime``, INFO) saying what it did:

* **allocator**. glibc's malloc serves large blocks with ``mmap`` and gives freed memory back
  to the kernel; a CNN frees and re-allocates its multi-megabyte activations at every layer,
  so each forward pays page faults and zeroing in the kernel (measured on a 2-core machine:
  more system time than user time when embedding 112 px faces). ``mallopt(M_MMAP_THRESHOLD,
  1 GiB)`` and ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)`` (glibc, through ``ctypes``; no
  dependency) keep those blocks on the heap and stop the trimming, so the pages are reused.
  The cost: the process keeps its peak heap instead of returning it. If jemalloc or tcmalloc
  is loaded (``LD_PRELOAD``), they already cache freed pages: nothing is changed. On other C
  libraries (musl, macOS, Windows) the allocator is left alone.
* **threads**: torch's intra-op threads = the CPUs this process may run on
  (``os.sched_getaffinity``, further capped by a cgroup CPU quota), divided among the ranks
  of a ``torchrun`` job on this host (``LOCAL_WORLD_SIZE``). torch's own default counts the
  machine's physical cores, which oversubscribes a process pinned to fewer (``taskset``,
  containers). ``OMP_NUM_THREADS``, when set, wins (note: ``torchrun`` sets it to 1).

``FACEKD_CPU_TUNING=0`` (or ``off`` / ``false`` / ``no``) turns all of it off. A
``torch.set_num_threads`` made after ``tune_cpu`` stands: the function never runs twice.

``worker_init(worker_id)`` is the DataLoader ``worker_init_fn`` for decoding workers: one
torch thread and no OpenCV thread pool per worker, so ``W`` workers decode on ``W`` cores
instead of ``W x cores`` threads fighting the main process.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ENV_SWITCH = "FACEKD_CPU_TUNING"
_OFF = ("0", "off", "false", "no")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap, not from fresh mmaps
TRIM_THRESHOLD = 2**31 - 1  # never give the top of the heap back (the largest int value)
_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


@dataclass(frozen=True)
class RuntimeReport:
    """What ``tune_cpu`` did: ``allocator`` and ``threads`` in words, ``enabled`` False when
    switched off by ``FACEKD_CPU_TUNING``."""

    enabled: bool
    allocator: str
    threads: str

    def summary(self) -> str:
        if not self.enabled:
            return f"facekd CPU tuning off ({ENV_SWITCH}={os.environ.get(ENV_SWITCH)})"
        return f"facekd CPU tuning: allocator {self.allocator}; torch threads {self.threads}"


_REPORT: RuntimeReport | None = None


def enabled() -> bool:
    """False when ``FACEKD_CPU_TUNING`` is ``0`` / ``off`` / ``false`` / ``no``."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in _OFF


def available_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 quota if one is set."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))  # ceil(quota / period)
    except (OSError, ValueError):
        pass
    return max(1, n)


def preloaded_allocator() -> str | None:
    """``"jemalloc"`` / ``"tcmalloc"`` / ``"mimalloc"`` if one is mapped into this process."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = os.environ.get("LD_PRELOAD", "")
    return next((name for name in _ALLOCATORS if f"lib{name}" in maps), None)


def _glibc() -> ctypes.CDLL | None:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        return None
    return ctypes.CDLL(None) if version.startswith("glibc") else None


def tune_allocator() -> str:
    """Set glibc's mmap and trim thresholds (see the module docstring); returns what happened."""
    other = preloaded_allocator()
    if other:
        return f"{other} (preloaded; left as is)"
    libc = _glibc()
    if libc is None:
        return "unchanged (not glibc)"
    mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not (mmap_ok and trim_ok):
        return f"glibc mallopt refused (mmap threshold {mmap_ok}, trim threshold {trim_ok})"
    return f"glibc mallopt: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold 2 GiB"


def choose_threads() -> tuple[int, str]:
    """``(threads, why)``: ``OMP_NUM_THREADS`` if set, else available CPUs per local rank."""
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    cpus, ranks = available_cpus(), os.environ.get("LOCAL_WORLD_SIZE", "1").strip()
    ranks_n = int(ranks) if ranks.isdigit() and int(ranks) > 0 else 1
    why = f"{cpus} available CPUs" + (f" / {ranks_n} local ranks" if ranks_n > 1 else "")
    return max(1, cpus // ranks_n), why


def tune_cpu() -> RuntimeReport:
    """Tune the allocator and torch's threads once per process; log and return what was done.

    Idempotent and cheap after the first call. ``FACEKD_CPU_TUNING=0`` makes it a no-op that
    reports ``enabled=False``.
    """
    global _REPORT
    if _REPORT is not None:
        return _REPORT
    if not enabled():
        _REPORT = RuntimeReport(False, "unchanged", "unchanged")
    else:
        allocator = tune_allocator()
        threads, why = choose_threads()
        before = torch.get_num_threads()
        if threads != before:
            torch.set_num_threads(threads)
        _REPORT = RuntimeReport(True, allocator, f"{threads} ({why}; was {before})")
    log.info(_REPORT.summary())
    return _REPORT


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch intra-op threads, then restore the count.

    For per-item work in the main process (decoding, ``to_tensor`` of one face): on a busy
    2-CPU machine, converting 1,024 single 112 px crops took 4.9 s with 2 threads (every
    37k-element op forks and joins the pool) and 0.36 s with 1.
    """
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


def bf16_support(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether bf16 runs natively on ``device``, and why (or why not). Without native support
    bf16 autocast is emulated: training here (AMD EPYC, AVX2 only) took 6.1 s per step of the
    56-px MobileFaceNet at batch 64 against 0.62 s in float32."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, "CUDA bf16" if ok else "this GPU has no bf16 support"
    if not torch.backends.mkldnn.is_available():
        return False, "torch built without oneDNN (mkldnn)"
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return True, "oneDNN bf16 (CPU has avx512_bf16 / AMX / ARM bf16)"
    return False, "CPU lacks native bf16 instructions (avx512_bf16 / AMX / ARM bf16)"


def worker_init(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: one torch thread, OpenCV's thread pool off."""
    torch.set_num_threads(1)
    try:
        import cv2
    except ImportError:  # facekd needs OpenCV, but a worker must never fail on it
        return
    cv2.setNumThreads(0)


def _reset_for_tests() -> None:
    """Forget the first call (tests only; the process's allocator settings remain)."""
    global _REPORT
    _REPORT = None
