"""Speed of facekd's evaluation maths against straightforward baselines, measured in one run.

(a) LFW-style 10-fold verification accuracy on 6,000 synthetic pairs (D=512 unit embeddings;
    matched pairs correlated, so the distances look like a real model's):

    * BASELINE (written here, labelled ``baseline_grid_loop``): the insightface grid loop as
      its ``calculate_roc`` does it -- squared-L2 distances, ``KFold(10, shuffle=False)``
      contiguous folds; for each fold, for each of the 400 thresholds ``arange(0, 4, 0.01)``,
      the training accuracy with numpy (``d < t`` compared with the labels, counted); the
      first best threshold is applied to the test fold. Accuracy only (insightface also builds
      the test ROC and runs a 4,000-threshold VAL loop; those are *not* in the baseline, so
      the ratios below are conservative).
    * facekd ``verify(..., thresholds='grid')`` and ``thresholds='exact'``: the full call,
      which additionally computes VAL@FAR, the pooled ROC, TAR@FAR, EER and AUC; and the
      accuracy search alone (``best_threshold`` on each fold's training pairs).

    The grid results must be identical: fold accuracies and thresholds of the baseline equal
    facekd's grid mode exactly (asserted).

(b) IJB-scale template scoring: ``--pairs`` (default 15.6M, IJB-C's 15,658,489 rounded)
    synthetic pairs over ``--templates`` (23,124, IJB-C) pre-pooled random unit templates,
    D=512 float32, template ids sparse in 0..~200k as in IJB-C; only scoring is timed.

    * BASELINE (``baseline_chunked_scores``): the usual evaluation script's approach -- a
      Python loop over chunks of 100,000 pairs; per chunk the two id arrays are mapped to rows
      through a dense ``id -> row`` lookup array (built with a Python loop over templates), the
      two ``(100000, 512)`` feature blocks are gathered, multiplied elementwise and summed over
      the last axis (``(a * b).sum(-1)``), and written into the preallocated score vector.
    * facekd ``pair_scores(template_ids, feats, t1, t2)``.

    Peak memory of each is measured with ``tracemalloc`` (numpy reports its buffers to it),
    relative to the inputs already in memory.

Writes ``benchmarks/results/eval_speed.json``.

    .venv/bin/python benchmarks/bench_eval_speed.py [--pairs 15600000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from facekd.evaluation.ijb import pair_scores
from facekd.evaluation.verification import best_threshold, kfold_ids, verify

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GRID = np.arange(0, 4, 0.01)  # insightface's accuracy thresholds (400)


# --------------------------------------------------------------------------------------------
# (a) 10-fold verification accuracy


def synthetic_pairs(n_pairs: int, dim: int, rng: np.random.Generator):
    """``(2N, D)`` unit embeddings, pair k = rows 2k, 2k+1, and ``(N,)`` labels."""
    issame = rng.random(n_pairs) < 0.5
    a = rng.standard_normal((n_pairs, dim))
    b = rng.standard_normal((n_pairs, dim))
    b[issame] = a[issame] + 9.0 * b[issame]  # matched: cosine ~0.11; mismatched: ~0 +- 0.04
    emb = np.empty((2 * n_pairs, dim), np.float32)
    emb[0::2], emb[1::2] = a, b
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, issame


def squared_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance of each pair (rows 2k, 2k+1), float64, as insightface computes it."""
    diff = embeddings[0::2].astype(np.float64) - embeddings[1::2].astype(np.float64)
    return np.sum(np.square(diff), axis=1)


def baseline_grid_loop(dist: np.ndarray, issame: np.ndarray, n_folds: int = 10):
    """BASELINE: the straightforward insightface-style grid loop (see the module docstring).

    Returns ``(fold_accuracy, fold_thresholds)``.
    """
    n = len(dist)
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    bounds = np.r_[0, np.cumsum(sizes)]
    acc_test = np.zeros(n_folds)
    best = np.zeros(n_folds)
    for f in range(n_folds):
        test = np.zeros(n, bool)
        test[bounds[f] : bounds[f + 1]] = True
        d_train, s_train = dist[~test], issame[~test]
        acc_train = np.zeros(len(GRID))
        for i, t in enumerate(GRID):
            predict = np.less(d_train, t)
            tp = np.sum(np.logical_and(predict, s_train))
            tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(s_train)))
            acc_train[i] = float(tp + tn) / d_train.size
        k = int(np.argmax(acc_train))
        best[f] = GRID[k]
        predict = np.less(dist[test], GRID[k])
        tp = np.sum(np.logical_and(predict, issame[test]))
        tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(issame[test])))
        acc_test[f] = float(tp + tn) / dist[test].size
    return acc_test, best


def facekd_search(dist: np.ndarray, issame: np.ndarray, mode: str, n_folds: int = 10):
    """The same fold loop with facekd's ``best_threshold`` (``mode`` 'grid' or 'exact')."""
    fold = kfold_ids(len(dist), n_folds)
    acc, best = np.zeros(n_folds), np.zeros(n_folds)
    for f in range(n_folds):
        test = fold == f
        best[f], _ = best_threshold(dist[~test], issame[~test], mode)
        acc[f] = np.count_nonzero((dist[test] < best[f]) == issame[test]) / np.count_nonzero(test)
    return acc, best


def best_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def bench_verification(n_pairs: int, dim: int, repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    emb, issame = synthetic_pairs(n_pairs, dim, rng)
    # shared: the searches are timed on the same distances
    t_dist, dist = best_time(lambda: squared_distances(emb), repeats)
    t_base, (base_acc, base_thr) = best_time(lambda: baseline_grid_loop(dist, issame), repeats)
    t_sgrid, (s_acc, s_thr) = best_time(lambda: facekd_search(dist, issame, "grid"), repeats)
    t_sexact, (e_acc, _) = best_time(lambda: facekd_search(dist, issame, "exact"), repeats)
    t_grid, r_grid = best_time(lambda: verify(emb, issame, thresholds="grid"), repeats)
    t_exact, r_exact = best_time(lambda: verify(emb, issame, thresholds="exact"), repeats)

    # identical grid results: accuracies and thresholds, exactly
    assert np.array_equal(base_acc, s_acc) and np.array_equal(base_thr, s_thr)
    assert np.array_equal(base_acc, r_grid.fold_accuracy), (base_acc, r_grid.fold_accuracy)
    assert np.array_equal(base_thr, r_grid.thresholds), (base_thr, r_grid.thresholds)
    assert np.mean(base_acc) == r_grid.accuracy and np.std(base_acc) == r_grid.accuracy_std
    assert np.array_equal(e_acc, r_exact.fold_accuracy)
    return {
        "n_pairs": n_pairs,
        "dim": dim,
        "n_folds": 10,
        "grid_thresholds": len(GRID),
        "repeats": repeats,
        "timing": "best of repeats, seconds",
        "baseline": "baseline_grid_loop: 10 folds x 400 thresholds, numpy train accuracy per "
        "threshold (insightface calculate_roc's accuracy loop; no test ROC, no VAL loop)",
        "search": "baseline and facekd_search (best_threshold per fold) run the same fold loop "
        "on the same precomputed squared-L2 distances; verify() timings are the whole call "
        "from embeddings (finite check, L2 normalisation, distances, accuracy, VAL@FAR, ROC, "
        "TAR@FAR, EER, AUC), compared with baseline distances + baseline loop",
        "time_baseline_grid_loop_s": t_base,
        "time_facekd_verify_grid_s": t_grid,
        "time_facekd_verify_exact_s": t_exact,
        "time_facekd_search_grid_s": t_sgrid,
        "time_facekd_search_exact_s": t_sexact,
        "time_baseline_distances_s": t_dist,
        "speedup_verify_grid": (t_dist + t_base) / t_grid,
        "speedup_verify_exact": (t_dist + t_base) / t_exact,
        "speedup_search_grid": t_base / t_sgrid,
        "speedup_search_exact": t_base / t_sexact,
        "grid_identical_to_baseline": True,
        "accuracy_baseline": float(np.mean(base_acc)),
        "accuracy_facekd_grid": r_grid.accuracy,
        "accuracy_facekd_exact": r_exact.accuracy,
        "fold_accuracy_baseline": base_acc.tolist(),
        "fold_accuracy_facekd_grid": r_grid.fold_accuracy.tolist(),
        "fold_accuracy_facekd_exact": r_exact.fold_accuracy.tolist(),
    }


# --------------------------------------------------------------------------------------------
# (b) IJB-scale template scoring


def baseline_chunked_scores(template_ids, feats, t1, t2, chunk: int = 100_000) -> np.ndarray:
    """BASELINE: chunked loop of 100k pairs, gather + ``(a * b).sum(-1)`` (module docstring)."""
    lookup = np.zeros(int(template_ids.max()) + 1, dtype=np.int64)
    for row, tid in enumerate(template_ids):
        lookup[tid] = row
    scores = np.zeros(len(t1))
    for s in range(0, len(t1), chunk):
        a = feats[lookup[t1[s : s + chunk]]]
        b = feats[lookup[t2[s : s + chunk]]]
        scores[s : s + chunk] = (a * b).sum(-1)
    return scores


def traced(fn) -> tuple[float, int, object]:
    """``(seconds, peak bytes allocated during fn, result)``; tracing runs around it."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    return dt, peak, out


def bench_ijb(n_pairs: int, n_templates: int, dim: int, repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    template_ids = np.sort(rng.choice(200_000, n_templates, replace=False)).astype(np.int64)
    feats = rng.standard_normal((n_templates, dim), dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    t1 = template_ids[rng.integers(0, n_templates, n_pairs)]
    t2 = template_ids[rng.integers(0, n_templates, n_pairs)]

    # untraced timings (tracemalloc adds overhead), best of repeats, alternating the two
    base_t, fk_t = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        base = baseline_chunked_scores(template_ids, feats, t1, t2)
        base_t.append(time.perf_counter() - t)
        del base
        t = time.perf_counter()
        ours = pair_scores(template_ids, feats, t1, t2)
        fk_t.append(time.perf_counter() - t)
        del ours
    _, base_peak, base = traced(lambda: baseline_chunked_scores(template_ids, feats, t1, t2))
    _, fk_peak, ours = traced(lambda: pair_scores(template_ids, feats, t1, t2))
    max_diff = float(np.max(np.abs(base - ours)))
    assert max_diff < 1e-5, max_diff
    inputs = feats.nbytes + t1.nbytes + t2.nbytes + template_ids.nbytes
    mib = 2.0**20
    return {
        "n_pairs": n_pairs,
        "n_templates": n_templates,
        "dim": dim,
        "dtype": "float32",
        "repeats": repeats,
        "timing": "best of repeats, seconds (untraced); peak memory from a separate traced run",
        "baseline": "baseline_chunked_scores: Python loop over 100,000-pair chunks; id -> row "
        "via a dense lookup array; gather both (100000, 512) blocks; (a * b).sum(-1)",
        "time_baseline_s": min(base_t),
        "time_facekd_pair_scores_s": min(fk_t),
        "speedup": min(base_t) / min(fk_t),
        "peak_mib_baseline": base_peak / mib,
        "peak_mib_facekd": fk_peak / mib,
        "inputs_mib": inputs / mib,
        "max_abs_score_difference": max_diff,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--verif-pairs", type=int, default=6000)
    p.add_argument("--pairs", type=int, default=15_600_000, help="IJB template pairs")
    p.add_argument("--templates", type=int, default=23_124)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5, help="repeats of (a); (b) uses 2")
    p.add_argument("--ijb-repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "eval_speed.json"))
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    a = bench_verification(args.verif_pairs, args.dim, args.repeats, args.seed)
    print(f"(a) 10-fold accuracy, {a['n_pairs']} pairs, D={a['dim']} (best of {args.repeats}):")
    print(f"    baseline grid loop (400 x 10)  {1e3 * a['time_baseline_grid_loop_s']:9.2f} ms")
    print(f"    (baseline distances            {1e3 * a['time_baseline_distances_s']:9.2f} ms)")
    for key, label in (
        ("search_grid", "facekd search, grid"),
        ("search_exact", "facekd search, exact"),
        ("verify_grid", "verify(grid) vs dist+loop"),
        ("verify_exact", "verify(exact) vs dist+loop"),
    ):
        print(
            f"    {label:<30} {1e3 * a[f'time_facekd_{key}_s']:9.2f} ms  "
            f"-> {a[f'speedup_{key}']:6.1f}x faster"
        )
    print(
        f"    grid fold accuracies identical to the baseline: yes (mean "
        f"{100 * a['accuracy_baseline']:.3f}%; exact mode {100 * a['accuracy_facekd_exact']:.3f}%)"
    )
    b = bench_ijb(args.pairs, args.templates, args.dim, args.ijb_repeats, args.seed)
    print(
        f"(b) IJB scoring, {b['n_pairs']:,} pairs over {b['n_templates']:,} templates, "
        f"D={b['dim']} float32 (best of {args.ijb_repeats}):"
    )
    print(
        f"    baseline 100k-chunk loop  {b['time_baseline_s']:8.2f} s, "
        f"peak {b['peak_mib_baseline']:8.1f} MiB"
    )
    print(
        f"    facekd pair_scores        {b['time_facekd_pair_scores_s']:8.2f} s, "
        f"peak {b['peak_mib_facekd']:8.1f} MiB  -> {b['speedup']:.2f}x faster"
    )
    wall = time.perf_counter() - t0
    res = {
        "command": " ".join(
            [".venv/bin/python", "benchmarks/bench_eval_speed.py"]
            + [shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv)]
        ),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, numpy {np.__version__}",
        "verification": a,
        "ijb": b,
        "wall_time_s": wall,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wall time {wall:.1f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
