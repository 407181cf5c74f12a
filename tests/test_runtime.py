"""facekd.runtime: what tune_cpu changes, when it refuses to, and DataLoader worker settings."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from facekd.runtime import cpu as runtime


class FakeLibc:
    """Records mallopt calls; ``accept`` is what glibc would return."""

    def __init__(self, accept: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.accept = accept

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.accept


@pytest.fixture
def fresh(monkeypatch):
    """A process state as before the first tune_cpu; torch threads restored afterwards."""
    threads = torch.get_num_threads()
    for var in (runtime.ENV_SWITCH, "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    libc = FakeLibc()
    monkeypatch.setattr(runtime, "_glibc", lambda: libc)
    monkeypatch.setattr(runtime, "preloaded_allocator", lambda: None)
    runtime._reset_for_tests()
    yield libc
    runtime._reset_for_tests()
    torch.set_num_threads(threads)


def test_glibc_thresholds_are_set(fresh):
    report = runtime.tune_cpu()
    assert fresh.calls == [(-3, 1 << 30), (-1, 2**31 - 1)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    assert report.enabled and "glibc mallopt" in report.allocator


def test_refused_mallopt_is_reported(fresh):
    fresh.accept = 0
    assert "refused" in runtime.tune_cpu().allocator


@pytest.mark.parametrize("value", ["0", "off", "False", " no "])
def test_env_switch_turns_everything_off(fresh, monkeypatch, value):
    monkeypatch.setenv(runtime.ENV_SWITCH, value)
    torch.set_num_threads(1)
    monkeypatch.setattr(runtime, "available_cpus", lambda: 3)
    report = runtime.tune_cpu()
    assert not report.enabled
    assert fresh.calls == []
    assert torch.get_num_threads() == 1


def test_preloaded_allocator_is_left_alone(fresh, monkeypatch):
    monkeypatch.setattr(runtime, "preloaded_allocator", lambda: "jemalloc")
    report = runtime.tune_cpu()
    assert fresh.calls == []
    assert report.allocator.startswith("jemalloc")


def test_not_glibc_is_left_alone(fresh, monkeypatch):
    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    assert runtime.tune_cpu().allocator == "unchanged (not glibc)"


def test_threads_follow_available_cpus(fresh, monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setattr(runtime, "available_cpus", lambda: 1)
    report = runtime.tune_cpu()
    assert torch.get_num_threads() == 1
    assert report.threads.startswith("1 (1 available CPUs; was 2)")


def test_threads_split_among_local_ranks(fresh, monkeypatch):
    monkeypatch.setattr(runtime, "available_cpus", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert runtime.choose_threads() == (2, "8 available CPUs / 4 local ranks")


def test_omp_num_threads_wins(fresh, monkeypatch):
    monkeypatch.setattr(runtime, "available_cpus", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.choose_threads() == (3, "OMP_NUM_THREADS")


def test_once_per_process_and_logged_once(fresh, monkeypatch, caplog):
    monkeypatch.setattr(runtime, "available_cpus", lambda: 1)
    with caplog.at_level(logging.INFO, logger="facekd.runtime"):
        first = runtime.tune_cpu()
        torch.set_num_threads(2)  # a later explicit choice stands
        second = runtime.tune_cpu()
    assert first is second
    assert len(fresh.calls) == 2  # one pair of mallopt calls, not two
    assert torch.get_num_threads() == 2
    assert [r.getMessage() for r in caplog.records] == [first.summary()]


def test_available_cpus_respects_affinity():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this platform")
    assert 1 <= runtime.available_cpus() <= len(os.sched_getaffinity(0))


_PROBE = """
import ctypes, json, os, sys
import torch
import facekd, facekd.runtime.cpu as rt
state = {"after_import": rt._REPORT is None}
if sys.argv[1] == "tune":
    rt.tune_cpu()
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in FIELDS.split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
x = torch.empty(64 << 20, dtype=torch.uint8)  # 64 MiB through malloc
state["mmapped"] = libc.mallinfo2().hblkhd
print(json.dumps(state))
"""


def _probe(mode: str, **env) -> dict:
    full = {k: v for k, v in os.environ.items() if k != runtime.ENV_SWITCH} | env
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=full, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_real_glibc_keeps_large_blocks_on_the_heap():
    """In a fresh process: importing facekd changes nothing; tune_cpu makes a 64 MiB block
    come from the heap instead of its own mmap (glibc's mallinfo2 counts mmapped bytes)."""
    if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
        pytest.skip("glibc only")
    if not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"):
        pytest.skip("glibc < 2.33 has no mallinfo2")
    untouched = _probe("import")
    assert untouched["after_import"] and untouched["mmapped"] >= 64 << 20
    off = _probe("tune", **{runtime.ENV_SWITCH: "0"})
    assert off["mmapped"] >= 64 << 20
    tuned = _probe("tune")
    assert tuned["after_import"] and tuned["mmapped"] < 64 << 20


class _Probe(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        import cv2

        return torch.tensor([torch.get_num_threads(), cv2.getNumThreads()])


def test_worker_init_one_thread_no_opencv_pool():
    loader = torch.utils.data.DataLoader(
        _Probe(), batch_size=1, num_workers=1, worker_init_fn=runtime.worker_init
    )
    for item in loader:
        torch_threads, cv_threads = item[0].tolist()
        assert torch_threads == 1
        assert cv_threads <= 1  # setNumThreads(0): OpenCV runs sequentially


def test_torch_threads_restores_even_on_error():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with runtime.torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), runtime.torch_threads(1):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
