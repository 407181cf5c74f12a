"""DDP through torchrun on 2 CPU ranks (gloo): ranks agree, and match one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_two_ranks_match_each_other_and_a_single_process(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    # 2 ranks x 4 images == 1 process accumulating 2 x 4 images: the same global batch split the
    # same way, so BatchNorm sees the same 4-image groups and the averaged gradients agree
    _run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            str(WORKER),
            str(tmp_path / "ddp"),
            "4",
            "3",
            "1",
        ],
        tmp_path,
    )
    _run([sys.executable, str(WORKER), str(tmp_path / "one"), "4", "3", "2"], tmp_path)
    r0 = torch.load(tmp_path / "ddp" / "rank0.pt")
    r1 = torch.load(tmp_path / "ddp" / "rank1.pt")
    one = torch.load(tmp_path / "one" / "rank0.pt")
    params = [k for k in r0 if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(r0[k], r1[k]) for k in params), "DDP ranks diverged"
    for k in params:  # equal up to float summation order
        torch.testing.assert_close(r0[k], one[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs")
    assert (tmp_path / "ddp" / "checkpoint.pt").exists() and not (
        tmp_path / "ddp" / "rank2.pt"
    ).exists()
