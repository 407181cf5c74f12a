"""The harness under torchrun (2 gloo ranks): one teacher cache build, no hang on NaN."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.data.synthetic import SyntheticFaces
from facekd.models import build_backbone
from facekd.teachers.cache import build_teacher_cache

WORKER = Path(__file__).with_name("ddp_harness_worker.py")


def _torchrun(mode: str, out: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", str(WORKER), mode, str(out)]
    # a hang (a rank waiting in an all-reduce for a rank that stopped) ends in the timeout
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=out.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_cache_is_built_once_by_rank0_and_equals_a_single_process_build(tmp_path):
    _torchrun("cache", tmp_path / "ddp")
    n = 12  # SyntheticFaces(3, 4)
    counts = [int((tmp_path / "ddp" / f"count_rank{r}.txt").read_text()) for r in (0, 1)]
    assert counts == [2 * n, 0], "rank 0 runs the teacher once per image and view, rank 1 never"
    assert all((tmp_path / "ddp" / f"opened_rank{r}.txt").read_text() == str(n) for r in (0, 1))

    torch.manual_seed(0)  # the worker's teacher, in this process
    teacher = build_backbone("mobilefacenet", width=0.25, input_size=32).eval()
    single = build_teacher_cache(
        teacher, SyntheticFaces(3, 4, size=32), tmp_path / "one", "p", dtype="float32",
        flip=True, progress=False, batch_size=4,
    )  # fmt: skip
    for name in ("embedding", "embedding.flip", "pooled", "pooled.flip"):
        ddp = np.load(tmp_path / "ddp" / "cache" / f"{name}.npy")
        np.testing.assert_allclose(ddp, single.arrays[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_with_the_message(tmp_path):
    _torchrun("nan", tmp_path / "ddp")
    for r in (0, 1):
        text = (tmp_path / "ddp" / f"rank{r}.txt").read_text()
        assert "non-finite loss at step 1 on rank(s) [1] of 2" in text, (r, text)
    assert "'loss': nan" in (tmp_path / "ddp" / "rank1.txt").read_text()
