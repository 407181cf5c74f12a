"""One report with the three numbers users judge a compressed face model by, side by side:
accuracy (per verification set, also at low resolution), compression ratio and speed-up.

``run_benchmark`` evaluates a teacher and any number of students on the same pair sets with
the insightface 10-fold protocol (``facekd.evaluation.verification``), optionally IJB-B/C 1:1
TAR@FAR, profiles every model against the teacher in the same run (``profile.compare``), and
writes ``report.md`` + ``report.json`` + ``accuracy.png`` + ``roc_<set>.png``. It backs both
``facekd bench`` (real ``.bin`` files) and ``facekd demo`` (synthetic held-out people).

Threshold search: every accuracy is computed twice on the same embeddings. The table's
accuracy columns (and ``<set>_acc`` in ``report.json``) use insightface's grid
(``thresholds='grid'``: ``np.arange(0, 4, 0.01)`` on squared L2 distances), which is what
published tables report; the ``(exact)`` column (``<set>_acc_exact``) searches every cut of the
sorted training distances. ``report.json`` names the search of every key under
``threshold_search``. TAR@FAR comes from the ROC of all pairs and involves no search.

Low-resolution robustness: the aligned crops are down-sampled to each size in ``low_res``
(``INTER_AREA``) and, for models with a larger input, resized back up (``degrade_to`` in
``facekd.evaluation.embed``); a model built for a low input size is always fed at that size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from facekd.evaluation.all_pairs import ALL_PAIRS_FARS, all_pairs_tar
from facekd.evaluation.embed import extract_embeddings
from facekd.evaluation.profile import TimingBudget, compare
from facekd.evaluation.report import plot_accuracy, plot_roc, write_report
from facekd.evaluation.verification import THRESHOLD_SEARCH, verify

QUICK_BUDGET = TimingBudget(warmup=5, runs=100, min_runs=10, max_seconds=3.0)
#: threshold searches of every accuracy; the first one fills the unsuffixed (default) columns
SEARCHES = ("grid", "exact")


def _key(base: str, search: str) -> str:
    return base if search == SEARCHES[0] else f"{base}_{search}"


def _verify_set(model, ps, degrade_to, channels_last=None):
    """``({search: result} for every threshold search, embeddings)``, one extraction."""
    emb = extract_embeddings(
        model, ps.images, degrade_to=degrade_to, channels_last=channels_last, progress=False
    )
    folds = ps.folds if len(ps.folds) and (ps.folds >= 0).all() else None
    pairs = (emb[ps.pairs[:, 0]], emb[ps.pairs[:, 1]])
    return {m: verify(pairs, ps.issame, folds=folds, thresholds=m) for m in SEARCHES}, emb


def all_pairs_cells(emb, ps, sep: str = "_") -> dict:
    """``<set><sep>tar_all@<far>`` for ``ALL_PAIRS_FARS`` when the set knows its identities (a
    pair list, or a ``.bin`` with its manifest: ``facekd.data.set_manifest.load_set``)."""
    if getattr(ps, "identities", None) is None:
        return {}
    res = all_pairs_tar(emb, ps.identities, ALL_PAIRS_FARS)
    return {f"{ps.name}{sep}tar_all@{far:g}": v for far, v in res.tar_at_far.items()}


def threshold_search_legend(names: Sequence[str], low_res: Sequence[int]) -> dict[str, str]:
    """``{report.json key: threshold search}`` for every accuracy key ``run_benchmark`` writes."""
    legend = {}
    for n in names:
        for m in SEARCHES:
            for base in (f"{n}_acc", f"{n}_std", *(f"{n}_acc@{s}" for s in low_res)):
                legend[_key(base, m)] = THRESHOLD_SEARCH[m]
        legend[f"{n}_tar@1e-3"] = "ROC of the protocol's pairs (no threshold search)"
        for far in ALL_PAIRS_FARS:
            legend[f"{n}_tar_all@{far:g}"] = "every pair of the set's faces (all_pairs_tar)"
    return legend


def _ijb_row(model, ijb_root: str, target: str) -> dict:
    """IJB 1:1 TAR@FAR and, when the 1:N lists are there, rank-1 and mean TPIR@FPIR.

    Faces are uint8 aligned crops, resized to the model's input (a low-resolution student
    sees its own size, as on the verification sets)."""
    from facekd.data.ijb import IJBDataset, ijb_1n_files, load_ijb, read_1n_list
    from facekd.evaluation.ijb import evaluate_ijb
    from facekd.evaluation.ijb_1n import evaluate_ijb_1n

    meta = load_ijb(ijb_root, target)
    feats = extract_embeddings(model, IJBDataset(meta, crops=True), normalize=False)
    res = evaluate_ijb(feats, meta.tids, meta.mids, meta.t1, meta.t2, meta.label, meta.scores)
    row = {f"{target}_tar@{far:g}": tar for far, tar in res.tar_at_far.items()}
    files = ijb_1n_files(ijb_root, target)
    if files is not None:
        lists = {k: read_1n_list(f) for k, f in files.items()}
        probe = lists.pop("probe")
        one_n = evaluate_ijb_1n(feats, meta.tids, meta.mids, meta.scores, lists, probe)
        row[f"{target}_1N_rank1"] = one_n["cmc"][1]
        row |= {f"{target}_1N_tpir@{f:g}": v for f, v in one_n["tpir@fpir"].items()}
    return row


def _accuracy_cells(model, ps, low_res, channels_last) -> tuple[dict, tuple]:
    """One model on one pair set: ``({report key: value}, (roc_fpr, roc_tpr))``.

    Keys: ``<set>_acc`` / ``<set>_std`` per threshold search (``_key``), ``<set>_tar@1e-3``,
    and ``<set>_acc@<s>`` per size ``s`` of ``low_res``; the faces are degraded to
    ``min(s, input size)``, and a model smaller than every ``low_res`` size sees its own size.
    """
    own = None if model.input_size >= max(low_res, default=0) else model.input_size
    res, emb = _verify_set(model, ps, own, channels_last)
    cells = all_pairs_cells(emb, ps)
    for m, r in res.items():
        cells[_key(f"{ps.name}_acc", m)] = r.accuracy
        cells[_key(f"{ps.name}_std", m)] = r.accuracy_std
    main = res[SEARCHES[0]]
    cells[f"{ps.name}_tar@1e-3"] = main.tar_at_far.get(1e-3)
    for size in low_res:
        degrade = min(size, model.input_size)
        # a model fed at its own input size already saw exactly these faces above
        low = (
            res
            if degrade == model.input_size
            else _verify_set(model, ps, degrade, channels_last)[0]
        )
        for m, r in low.items():
            cells[_key(f"{ps.name}_acc@{size}", m)] = r.accuracy
    return cells, (main.roc_fpr, main.roc_tpr)


def _cost_cells(t_model, model, batch_sizes, precisions, budget) -> dict:
    """``model`` profiled against the teacher (``profile.compare``, interleaved): its size,
    FLOPs, compression, speed-up per (batch size, precision) and batch-1 latency."""
    cmp = compare(
        t_model,
        model,
        batch_sizes=batch_sizes,
        precisions=precisions,
        budget=budget,
        progress=False,
    )
    cells = {
        "params_M": cmp.student.params / 1e6,
        "gflops": cmp.student.flops / 1e9,
        "size_MB": cmp.student.size_bytes / 1e6,
    }
    cells["compression"] = cmp.compression_ratio
    for sp in cmp.speedups():
        cells[f"speedup_b{sp['batch_size']}_{sp['precision']}"] = sp["speedup"]
    cells["latency_b1_ms"] = (
        cmp.student.latency_for(1, precisions[0]).median_ms if 1 in batch_sizes else None
    )
    return cells


def _columns(rows: list[dict], pair_sets, low_res, extra_columns) -> list[tuple[str, str]]:
    """``(key, header)`` of the report table: accuracies per set (grid, ± std, low resolution,
    exact), IJB keys and speed-ups as the first row has them, cost, then ``extra_columns``."""
    acc_cols = []
    for ps in pair_sets:
        grid, exact = SEARCHES
        acc_cols += [(f"{ps.name}_acc", f"{ps.name} ({grid})"), (f"{ps.name}_std", "± std")]
        acc_cols += [(f"{ps.name}_acc@{s}", f"{ps.name} @{s}px ({grid})") for s in low_res]
        acc_cols += [(_key(f"{ps.name}_acc", exact), f"{ps.name} ({exact})")]
        acc_cols += [
            (f"{ps.name}_tar_all@{far:g}", f"{ps.name} TAR@{far:g} all pairs")
            for far in ALL_PAIRS_FARS
            if f"{ps.name}_tar_all@{far:g}" in rows[0]
        ]
    ijb_cols = [(k, k) for k in rows[0] if k.startswith(("IJBC_", "IJBB_"))]
    speed_cols = [
        (k, k.replace("speedup_", "speed-up ")) for k in rows[0] if k.startswith("speedup_")
    ]
    return [
        ("model", "model"),
        ("method", "method"),
        ("input_px", "input px"),
        *acc_cols,
        *ijb_cols,
        ("params_M", "params (M)"),
        ("gflops", "GFLOPs"),
        ("compression", "compression ×"),
        ("latency_b1_ms", "latency b1 ms"),
        *speed_cols,
        *extra_columns,
    ]


def _plots(rows: list[dict], curves: dict, pair_sets, low_res, out: Path) -> list[str]:
    """Write ``roc_<set>.png`` per set and ``accuracy.png`` (the first set, at full and low
    resolution); returns the file names, ``accuracy.png`` first."""
    images = []
    for ps in pair_sets:
        plot_roc(curves[ps.name], out / f"roc_{ps.name}.png", title=f"ROC, {ps.name}")
        images.append(f"roc_{ps.name}.png")
    bars = [(f"{ps.name}_acc", ps.name) for ps in pair_sets[:1]]
    bars += (
        [(f"{pair_sets[0].name}_acc@{s}", f"{pair_sets[0].name} @{s}px") for s in low_res]
        if pair_sets
        else []
    )
    plot_accuracy(
        rows, out / "accuracy.png", bars, title=f"Verification accuracy ({SEARCHES[0]} thresholds)"
    )
    images.insert(0, "accuracy.png")
    return images


#: notes every report carries under the caller's own
_PROTOCOL_NOTES = [
    "Accuracy: insightface protocol (flip-sum, L2-normalised) over the set's own folds, "
    "else 10 contiguous blocks of the .bin; the threshold is chosen on the other folds.",
    f"Columns marked ({SEARCHES[0]}) and the ± std use the {THRESHOLD_SEARCH[SEARCHES[0]]}; "
    f"columns marked ({SEARCHES[1]}) use the {THRESHOLD_SEARCH[SEARCHES[1]]}. "
    "TAR@FAR (report.json) comes from the ROC of the protocol's pairs, with no threshold "
    "search; 'TAR@FAR all pairs' columns score every mated and non-mated pair of the set's "
    "faces (facekd.evaluation.all_pairs: at most FAR x impostors accepted), where the set "
    "knows its identities (pair lists, .bin files with their manifest).",
    "Compression = teacher params / model params; speed-up = teacher median latency / model "
    "median latency, measured side by side in this run (interleaved).",
]


def run_benchmark(
    models: dict[str, tuple[object, str]],
    pair_sets: Sequence,
    out_dir: str | Path,
    *,
    teacher: str = "teacher",
    low_res: Sequence[int] = (56, 32),
    ijb: tuple[str, str] | None = None,
    budget: TimingBudget = QUICK_BUDGET,
    batch_sizes: tuple[int, ...] = (1, 64),
    precisions: tuple[str, ...] = ("fp32",),
    title: str = "facekd benchmark: teacher vs students",
    notes: Sequence[str] = (),
    extra_columns: Sequence[tuple[str, str]] = (),
    extra_rows: dict[str, dict] | None = None,
    channels_last: bool | None = None,
) -> Path:
    """Evaluate and profile ``models`` = {name: (backbone, description)}; returns report.md.

    ``pair_sets``: ``facekd.data.verification.PairSet`` objects of aligned crops (``.bin``).
    ``ijb``: optional (root, "IJBC" | "IJBB"). ``extra_rows``: per-model values to show too.
    ``channels_last``: embed in channels-last memory layout (same fp32 arithmetic; accuracies
    equal to the default layout's within float rounding); ``None`` (default) takes
    ``extract_embeddings``' measured per-architecture choice (on for MobileFaceNet / MBF on
    CPU, where it is ~1.6x faster; off for iResNet, where it is not).
    """
    if teacher not in models:
        raise ValueError(f"the teacher {teacher!r} must be one of the models {list(models)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_model = models[teacher][0]
    rows, curves = [], {ps.name: {} for ps in pair_sets}
    for name, (model, label) in models.items():
        row = {
            "model": name,
            "method": label,
            "input_px": model.input_size,
            **(extra_rows or {}).get(name, {}),
        }
        for ps in pair_sets:
            cells, curves[ps.name][name] = _accuracy_cells(model, ps, low_res, channels_last)
            row.update(cells)
        if ijb is not None:
            row.update(_ijb_row(model, *ijb))
        row.update(_cost_cells(t_model, model, batch_sizes, precisions, budget))
        rows.append(row)
        print(
            f"  {name:<18} "
            + "  ".join(f"{ps.name} {row[f'{ps.name}_acc']:.4f}" for ps in pair_sets)
            + f" ({SEARCHES[0]})"
            + f"  {row['compression']:.1f}x smaller"
        )
    columns = _columns(rows, pair_sets, low_res, extra_columns)
    images = _plots(rows, curves, pair_sets, low_res, out)
    legend = threshold_search_legend([ps.name for ps in pair_sets], low_res)
    return write_report(
        rows,
        out,
        title=title,
        columns=columns,
        notes=[*notes, *_PROTOCOL_NOTES],
        images=images,
        extra={"threshold_search": legend},
    )
