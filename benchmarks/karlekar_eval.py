"""Evaluation side of ``bench_karlekar.py``: embeddings of every row (cached, each distinct
crop once), per-pair decisions, McNemar and sign tests, the pooled-feature cosine to the
teacher, training-log summaries and the cost (parameters, FLOPs, eager and onnxruntime
latency). Pure functions of the saved models, the ``.bin`` files and the run folders.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

LOW = 56  # the students' input side
#: KT students of another architecture than the legacy teacher's: their own 112-px teacher,
#: evaluated as ``<arch>@112`` and ``<arch>@<side>`` reference rows (the file under shared/data)
OTHER_TEACHERS = {"mbf": ("espdl-mobilefacenets", "mbf.onnx")}


def other_teacher_refs(trained: dict) -> dict:
    """``{"<arch>@112" | "<arch>@<side>": (teacher, degrade_to)}`` for the students in
    ``trained`` (``{name: (model, side, path)}``) whose architecture is in ``OTHER_TEACHERS``."""
    from bench_real_distill import DATA

    from facekd.models.checkpoints import load_backbone

    refs: dict = {}
    for model, side, _ in trained.values():
        arch = getattr(model, "arch", "")
        if arch in OTHER_TEACHERS:
            if f"{arch}@112" not in refs:
                refs[f"{arch}@112"] = (load_backbone(DATA.joinpath(*OTHER_TEACHERS[arch])), None)
            refs[f"{arch}@{side}"] = (refs[f"{arch}@112"][0], side)
    return refs


def pair_decisions(emb: np.ndarray, ps, search: str = "grid"):
    """``(correct (N,) bool, result)``: each pair judged with its fold's threshold (chosen on
    the other folds), exactly as ``verify`` counts accuracy (accept when ``d < theta``)."""
    from facekd.evaluation.verification import pair_distances, verify

    pairs = (emb[ps.pairs[:, 0]], emb[ps.pairs[:, 1]])
    res = verify(pairs, ps.issame, folds=ps.folds, thresholds=search)
    dist = pair_distances(pairs)
    fold_ids = np.unique(ps.folds)
    theta = res.thresholds[np.searchsorted(fold_ids, ps.folds)]
    correct = (dist < theta) == ps.issame.astype(bool)
    per_fold = [correct[ps.folds == f].mean() for f in fold_ids]
    assert abs(float(np.mean(per_fold)) - res.accuracy) < 1e-12, "decisions disagree with verify"
    return correct, res


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict:
    """Exact McNemar test of two classifiers' per-pair correctness (two-sided binomial on the
    discordant pairs): ``a_only`` = A right and B wrong, ``b_only`` the reverse."""
    from scipy.stats import binomtest

    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = a_only + b_only
    p = binomtest(min(a_only, b_only), n, 0.5).pvalue if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p": float(p)}


def sign_test(a: np.ndarray, b: np.ndarray) -> dict:
    """Sign test over pairs on the seed-averaged correctness ``(seeds, N)`` of A and B: the
    pair is the unit, each pair counts once however many seeds it flips in."""
    from scipy.stats import binomtest

    ma, mb = a.mean(axis=0), b.mean(axis=0)
    plus, minus = int(np.sum(ma > mb)), int(np.sum(ma < mb))
    p = binomtest(min(plus, minus), plus + minus, 0.5).pvalue if plus + minus else 1.0
    return {"a_better": plus, "b_better": minus, "p": float(p)}


def embed_sets(model, sets, degrade, path: Path, newer_than: Path | None = None) -> dict:
    """``{set: (2N, D) embeddings}`` of every image of every set, each distinct crop embedded
    once (LFW reuses images across pairs, CFP-FF and CFP-FP share the frontal faces: about
    2.7x fewer forwards); cached at ``path`` (``.npz``), recomputed when ``newer_than`` (the
    student file) is newer."""
    from facekd.evaluation.embed import extract_embeddings

    if path.exists() and (newer_than is None or path.stat().st_mtime > newer_than.stat().st_mtime):
        cached = np.load(path)
        if all(ps.name in cached for ps in sets):
            return {ps.name: cached[ps.name] for ps in sets}
    index, unique = {}, []
    for ps in sets:
        for img in ps.images:
            if bytes(img) not in index:
                index[bytes(img)] = len(unique)
                unique.append(img)
    emb = extract_embeddings(model, unique, degrade_to=degrade, progress=False)
    out = {ps.name: emb[[index[bytes(i)] for i in ps.images]] for ps in sets}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), **out)
    path.with_suffix(".tmp.npz").replace(path)
    return out


def reference_models(low_sizes=(LOW,)) -> dict:
    """``{name: (model, degrade_to)}`` of the rows that are evaluated, not trained: the teacher
    at 112 px and fed each of ``low_sizes`` (``teacher@<side>``), and the 56-px KT start."""
    from bench_real_distill import TEACHER

    from facekd.models.checkpoints import load_backbone
    from facekd.models.transfer import build_kt_student

    teacher = load_backbone(str(TEACHER))
    kt_init, _ = build_kt_student(teacher, LOW, fc="resize")
    low = {f"teacher@{side}": (teacher, side) for side in sorted(set(low_sizes), reverse=True)}
    return {"teacher@112": (teacher, None), **low, "kt_init": (kt_init.eval(), LOW)}


def _faces(ps, n: int, size: int, degrade: int | None) -> torch.Tensor:
    from facekd.data.transforms import read_rgb, to_tensor
    from facekd.evaluation.embed import prepare_face

    imgs = [prepare_face(read_rgb(x), size, degrade_to=degrade) for x in ps.images[:n]]
    return torch.stack([to_tensor(i) for i in imgs])


@torch.no_grad()
def pooled_cosine(model, p_t: torch.Tensor, ps, n: int = 256, degrade: int = LOW) -> float:
    """Mean cosine between the model's pooled feature on the faces down-sampled to ``degrade``
    px and ``p_t``, the teacher's on the 112-px faces (``teacher_pooled``; LFW images): how
    close a student stays to the teacher's features."""
    p_s = model.eval().forward_features(_faces(ps, n, model.input_size, degrade)).pooled
    return float(torch.nn.functional.cosine_similarity(p_s, p_t).mean())


@torch.no_grad()
def teacher_pooled(teacher, ps, n: int = 256) -> torch.Tensor:
    """The teacher's pooled features of the first ``n`` faces of ``ps`` at 112 px."""
    return teacher.eval().forward_features(_faces(ps, n, 112, None)).pooled


def log_summary(
    run: Path, window: int = 3, keys=("loss", "ce", "kd/pooling_transfer", "img_per_s")
) -> dict:
    """First and last logged values of the training terms ``keys`` (``log.csv``), averaged
    over ``window`` log lines; ``kd/pooling_transfer`` is ``2 - 2 cos``, given as a cosine
    too."""
    import csv

    rows = list(csv.DictReader((run / "log.csv").open()))
    out = {"logged_steps": int(rows[-1]["step"]) if rows else 0}
    for key in keys:
        vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
        if vals:
            out[f"{key}_first"] = float(np.mean(vals[:window]))
            out[f"{key}_last"] = float(np.mean(vals[-window:]))
    if "kd/pooling_transfer_first" in out:
        for end in ("first", "last"):
            out[f"pooled_cos_{end}"] = 1 - out[f"kd/pooling_transfer_{end}"] / 2
    return out


def cost(teacher, student, quick: bool) -> dict:
    """Parameters, FLOPs, eager fp32 latency (``profile.compare``, interleaved) and
    onnxruntime latency of the teacher at 112 px and the 56-px student."""
    import onnxruntime as ort

    from facekd.deploy.export import export_onnx
    from facekd.evaluation.profile import TimingBudget, compare

    budget = TimingBudget(warmup=1, runs=3, min_runs=1, max_seconds=0.5)
    if not quick:
        budget = TimingBudget(warmup=5, runs=50, min_runs=10, max_seconds=3.0)
    sizes = (1,) if quick else (1, 64)
    rep = compare(
        teacher,
        student,
        batch_sizes=sizes,
        precisions=("fp32",),
        budget=budget,
        progress=False,
        teacher_name="teacher@112",
        student_name="student@56",
    )
    out = {"environment": rep.environment, "models": {}}
    for name, prof in (("teacher@112", rep.teacher), ("student@56", rep.student)):
        out["models"][name] = {"params": prof.params, "gflops": prof.gflops}
        for t in prof.latency:
            out["models"][name][f"eager_b{t.batch_size}_ms"] = t.median_ms
    if quick:  # the ONNX export and its parity check cost more than the smoke test's budget
        return out
    with tempfile.TemporaryDirectory() as tmp:
        for name, prof, model in (
            ("teacher@112", rep.teacher, teacher),
            ("student@56", rep.student, student),
        ):
            row = out["models"][name]
            onnx = Path(tmp) / f"{name.replace('@', '_')}.onnx"
            export_onnx(model, onnx)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            sess = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
            feed = sess.get_inputs()[0].name
            size = prof.input_size
            for b in sizes:
                x = np.random.default_rng(0).standard_normal((b, 3, size, size), np.float32)
                sess.run(None, {feed: x})
                runs, t0, times = 0, time.perf_counter(), []
                while runs < (3 if quick else 10) or time.perf_counter() - t0 < (
                    0.3 if quick else 2
                ):
                    t = time.perf_counter()
                    sess.run(None, {feed: x})
                    times.append(time.perf_counter() - t)
                    runs += 1
                row[f"ort_b{b}_ms"] = float(np.median(times) * 1e3)
    return out


def _strides(model) -> dict:
    """``{"last_stride": 1}`` for a MobileFaceNet built without its last down-sampling, else
    ``{}``: the constructor keyword a KT student of the same shapes needs."""
    ls = getattr(model, "arch_kwargs", {}).get("last_stride", 2)
    return {"last_stride": ls} if ls != 2 else {}


def evaluate_all(
    rows, seeds, runs: Path, students: Path, sets, same_arch: bool = True
) -> tuple[dict, dict, dict]:
    """``(per_model, decisions, pooled)``: ``per_model[name][set]`` = grid / exact accuracy,
    fold std, TAR@1e-3; ``decisions[name][set]`` = per-pair correctness (grid);
    ``pooled[name]`` = pooled-feature cosine to the 112-px teacher on LFW faces. ``seeds``: one
    list for every row, or ``{row: seeds}``. ``same_arch``: every student must be the teacher's
    architecture at its own input side (Karlekar / embedding KD: 56 px, or lower; each is fed
    the faces down-sampled to that side, and the teacher is also evaluated at every such side:
    ``teacher@<side>``); False for other students (Luo's, at 56 px). ``per_model`` lists the
    references first (``reference_models``), then the students."""
    from facekd.evaluation.verification import verify
    from facekd.models.checkpoints import load_backbone
    from facekd.models.transfer import build_kt_student

    trained = {}
    seeds_of = seeds if isinstance(seeds, dict) else {row: seeds for row in rows}
    for row in rows:
        for seed in seeds_of[row]:
            path = students / f"{row}_seed{seed}.pt"
            model = load_backbone(path)
            trained[f"{row}_seed{seed}"] = (model, model.input_size if same_arch else LOW, path)
    others = other_teacher_refs(trained) if same_arch else {}
    refs = reference_models({LOW} | {side for _, side, _ in trained.values()})
    teacher = refs["teacher@112"][0]
    if any(_strides(m) for m, _, _ in trained.values()):  # the 7x7-last-map KT start, untrained
        kt_ls1, _ = build_kt_student(teacher, LOW, fc="resize", last_stride=1)
        refs["kt_init_ls1"] = (kt_ls1.eval(), LOW)
    for side in sorted({side for _, side, _ in trained.values()} - {LOW}) if same_arch else ():
        refs[f"kt_init_{side}"] = (build_kt_student(teacher, side, fc="resize")[0].eval(), side)
    refs |= {k: v for k, v in others.items() if k.endswith("@112")}
    refs |= {k: v for k, v in others.items() if not k.endswith("@112")}
    models = {name: (m, d, None) for name, (m, d) in refs.items()} | trained
    shapes = {}  # (arch, side, strides) -> the KT student's parameter shapes there
    for name, (model, side, path) in models.items():  # the teacher's network at each side
        if path is not None and same_arch:
            arch, strides = getattr(model, "arch", ""), _strides(model)
            own = others[f"{arch}@112"][0] if arch in OTHER_TEACHERS else teacher
            key = (arch, side, tuple(strides.items()))
            if key not in shapes:
                kt = build_kt_student(own, side, fc="resize", **strides)[0]
                shapes[key] = {k: tuple(v.shape) for k, v in kt.state_dict().items()}
            got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            assert got == shapes[key], f"{name} is not its teacher's network at {side} px"
            assert all(p.dtype == torch.float32 for p in model.parameters()), name
    per_model, decisions, pooled = {}, {}, {}
    lfw = next(ps for ps in sets if ps.name == "lfw")
    p_t = teacher_pooled(teacher, lfw)
    for name, (model, degrade, path) in models.items():
        per_model[name], decisions[name] = {}, {}
        embs = embed_sets(model, sets, degrade, runs / "emb" / f"{name}.npz", path)
        for ps in sets:
            emb = embs[ps.name]
            correct, grid = pair_decisions(emb, ps, "grid")
            exact = verify(
                (emb[ps.pairs[:, 0]], emb[ps.pairs[:, 1]]),
                ps.issame,
                folds=ps.folds,
                thresholds="exact",
            )
            decisions[name][ps.name] = correct
            per_model[name][ps.name] = {
                "acc": grid.accuracy,
                "fold_std": grid.accuracy_std,
                "acc_exact": exact.accuracy,
                "tar@1e-3": grid.tar_at_far.get(1e-3),
            }
        legacy_arch = getattr(model, "arch", "") == getattr(teacher, "arch", "")
        if name != "teacher@112" and legacy_arch and (same_arch or path is None):  # same C
            pooled[name] = pooled_cosine(model, p_t, lfw, degrade=degrade)
    return per_model, decisions, pooled
