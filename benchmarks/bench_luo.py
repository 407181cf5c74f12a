"""Neuron selection by its paper's protocol, on real faces: Luo et al.'s ablation.

Luo, Zhu, Liu, Wang, Tang, AAAI 2016 (MobileID): a small student regresses K neurons of the
teacher's top hidden layer, chosen for being informative about identity and not correlated
with each other; the paper compares that with regressing all D neurons and K random ones.
The same three rows here, each over seeds 0, 1, 2 (same start and batches per seed):

* ``luo_selected``: the K = 105 neurons of ``facekd.teachers.select_neurons`` (identity-label
  criterion on the cached 112-px teacher embeddings of every labelled photo; 0.824 D, the
  paper's 422 of 512);
* ``luo_all``: all D = 128 neurons;
* ``luo_random``: K = 105 neurons drawn at random (numpy seed 0).

Student: MobileFaceNet width 0.35 fed 56-px faces, from random weights, its K-d output the face
descriptor; regression only (``mse_half``), AdamW, 800 steps of batch 64 over the 23,761
photos of CelebA-299 + CelebA-tight-1756 (``benchmarks/configs/luo/``). Report
(``benchmarks/results/real_distill/luo/``: Markdown, JSON, PNG): mean ± std over seeds on
LFW-mini, CFP-FF and CFP-FP-mini, paired tests on the per-pair decisions. Students stay in
``<work>/luo/students`` (not committed). Resumable; exits 0 with a message when
``../shared/data`` is absent.

    .venv/bin/python benchmarks/bench_luo.py [--rows R] [--seeds 0,1,2] [--no-report]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules

import bench_embedding_kd as ekd  # noqa: E402
import bench_karlekar as karlekar  # noqa: E402
import bench_real_distill as real  # noqa: E402
import numpy as np  # noqa: E402

ROOT = real.ROOT
CONFIGS = ROOT / "benchmarks" / "configs" / "luo"
ROWS = ("luo_selected", "luo_all", "luo_random")
RESULTS = ROOT / "benchmarks" / "results" / "real_distill"
TEACHER_DIM = 128  # the legacy MobileFaceNet's embedding
RANDOM_SEED = 0


def runs_dir(work: Path) -> Path:
    return work / "luo"


def row_indices(row: str, k: int) -> list[int] | None:
    """The neurons a row regresses, when not read from the selection file."""
    if row == "luo_all":
        return list(range(TEACHER_DIM))
    if row == "luo_random":
        rng = np.random.default_rng(RANDOM_SEED)
        return sorted(rng.choice(TEACHER_DIM, size=k, replace=False).tolist())
    return None


def selected_k(work: Path) -> int:
    from facekd.selection import NeuronSelection

    return len(NeuronSelection.from_json(runs_dir(work) / "selection.json").indices)


def row_config(row: str, seed: int, work: Path, quick: bool, steps: int | None) -> dict:
    """``common.yaml`` + ``<row>.yaml`` at ``seed``, with the row's neuron indices."""
    cfg = real.method_config(row, work, quick, steps, configs=CONFIGS)
    cfg["out_dir"] = str(runs_dir(work) / f"{row}_seed{seed}")
    cfg["train"]["seed"] = seed
    cfg["data"]["seed"] = seed
    indices = row_indices(row, selected_k(work))
    if indices is not None:
        cfg["losses"][0]["kwargs"] = {"indices": indices}
    return cfg


def ensure_selection(work: Path) -> Path:
    """Luo et al.'s selection on the cached teacher embeddings of every labelled photo."""
    from facekd.data.folder import ImageFolderDataset, exclusion_list
    from facekd.teachers.select_neurons import run_selection

    path = runs_dir(work) / "selection.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        k = round(0.824 * TEACHER_DIM)  # the paper's 422 of 512 outputs
        # the identities every real-data run holds out (dev split, evaluation look-alikes)
        exclude = exclusion_list(str(real.EXCLUDE), "folder")
        data = ImageFolderDataset(work / "train_all", exclude=exclude)
        sel = run_selection(None, data, path, teacher_cache=work / "teacher_cache_all", k=k)
        print(f"neuron selection: kept {len(sel.indices)} of {len(sel.q)} teacher neurons")
    return path


def main(argv=None) -> int:
    parsed = ekd.ablation_args(argv, __doc__, ROWS, "luo")
    if isinstance(parsed, int):
        return parsed
    args, rows, seeds, work, out = parsed
    students = runs_dir(work) / "students"
    students.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ekd.prepare_all_photos(work)
    ekd.build_cache(work)
    ensure_selection(work)
    times = karlekar.train_rows(rows, seeds, work, students, False, args.steps, config=row_config)
    if args.no_report:
        return 0
    from luo_report import write_luo_report

    sets = real.prepare_eval_sets(work, quick=False)
    md = write_luo_report(ROWS, seeds, runs_dir(work), students, sets, out, times,
                          wall_start=t0, k=selected_k(work))  # fmt: skip
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
