"""Report of ``bench_embedding_kd.py``: mean ± std per row over its seeds, paired tests on the
per-pair decisions (McNemar per shared seed, sign test over pairs), the embedding cosine to the
teacher, what the training logs show; Markdown + JSON + PNG.

Every number is computed here from the saved float16 students, the teacher and the packed
``.bin`` files (``karlekar_eval``: one evaluation path for both HR->LR reports).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import yaml
from karlekar_eval import evaluate_all, log_summary, mcnemar, sign_test
from karlekar_report import _p, _pm, plot_rows

#: (A, B): does A beat B? Rows trained at the same seeds share starts (within a pair) and
#: batches, so the tests pair per seed
COMPARISONS = (
    ("kt_emb128", "kt_arcface"),
    ("scratch_emb128", "scratch"),
    ("kt_emb16", "kt_arcface"),
    ("kt_emb128_only", "kt_arcface"),
    ("kt_emb128", "kt_emb16"),
    ("kt_emb_adamw", "scratch_b64"),
    ("kt_emb_adamw_long", "scratch_b64_long"),
    ("kt_emb_fm", "kt_emb_adamw_long"),  # the same items in the same order, new views of them
    ("kt_pooled_emb_long", "kt_emb_adamw_long"),  # + the pooled feature, same batches
    ("kt_mbf_emb_long", "scratch_mbf_long"),  # mbf's network at 56 px, KT vs scratch
    ("kt_mbf_emb_long", "kt_emb_adamw_long"),  # which teacher to start from and mimic
    ("kt_hinton_ens", "kt_hinton_mbf"),  # an ensemble against each of two single teachers
    ("kt_hinton_ens", "kt_hinton_legacy"),
    ("kt_hinton_mbf", "kt_hinton_legacy"),
    ("kt_emb_adamw", "kt_hinton_legacy"),  # one teacher, its embedding or its soft targets
    ("kt_emb_adamw_40", "scratch_b64_40"),
    ("kt_emb_adamw_32", "scratch_b64_32"),
    ("kt_emb_ls1", "kt_emb_adamw_fp32"),  # the 7x7 last map against the 4x4 one, same batches
    ("kt_emb_adamw_fp32", "kt_emb_adamw"),  # float32 against bf16 autocast, same batches
    ("kt_emb_ls1_long", "kt_emb_adamw_long"),
    ("kt_emb_adamw_64", "scratch_b64_64"),  # higher sides: what 98.5+ on LFW costs
    ("kt_emb_adamw_80", "scratch_b64_80"),
    ("kt_emb_adamw_64", "kt_emb_adamw_fp32"),  # 64 / 80 against 56 px, the same 800 batches
    ("kt_emb_adamw_80", "kt_emb_adamw_fp32"),
    ("kt_emb_adamw_64_long", "kt_emb_adamw_long"),  # 64 against 56 px, the same 2,500 batches
)
#: compared pairs that also differ in precision (float32 against bf16 autocast): the rows of a
#: CPU without native bf16 (kt_emb_ls1*) against rows trained with it; the report says so
PRECISION_PAIRS = {
    ("kt_emb_adamw_fp32", "kt_emb_adamw"),
    ("kt_emb_ls1_long", "kt_emb_adamw_long"),
    ("kt_emb_adamw_64_long", "kt_emb_adamw_long"),
}
#: compared pairs whose students are fed faces of different sides (the same photos in the same
#: order, down-sampled to each student's side): what the side buys on one schedule
SIDE_PAIRS = {
    ("kt_emb_adamw_64", "kt_emb_adamw_fp32"),
    ("kt_emb_adamw_80", "kt_emb_adamw_fp32"),
    ("kt_emb_adamw_64_long", "kt_emb_adamw_long"),
}
LABELS = {
    "teacher@112": "teacher, 112-px faces (reference)",
    "teacher@56": "teacher fed the same 56-px faces (no training)",
    "kt_init": "KT student before training (teacher weights at 56 px)",
    "kt_arcface": "KT start, ArcFace only (no teacher while training)",
    "kt_emb128": "KT start, ArcFace + embedding mimic x128",
    "kt_emb16": "KT start, ArcFace + embedding mimic x16",
    "kt_emb128_only": "KT start, embedding mimic x128, no ArcFace",
    "scratch": "random start, ArcFace only",
    "scratch_emb128": "random start, ArcFace + embedding mimic x128",
    "kt_emb_adamw": "KT start, embedding mimic x128 alone, AdamW, batch 64, 800 steps",
    "scratch_b64": "random start, ArcFace only, SGD, batch 64, 800 steps",
    "kt_emb_adamw_long": "KT start, embedding mimic x128 alone, AdamW, batch 64, 2,500 steps",
    "scratch_b64_long": "random start, ArcFace only, SGD, batch 64, 2,500 steps",
    "kt_emb_adamw_4000": "KT start, embedding mimic x128 alone, AdamW, batch 64, 4,000 steps",
    "kt_emb_fm": "kt_emb_adamw_long with function matching: new views, the teacher online",
    "kt_pooled_emb_long": "kt_emb_adamw_long + pooled-feature transfer x64 (Karlekar KT+KD)",
    "kt_mbf_emb_long": "mbf.onnx's network at 56 px: KT start, embedding mimic x128 of mbf@112",
    "scratch_mbf_long": "mbf.onnx's network at 56 px, random start, ArcFace only, SGD",
    "kt_hinton_legacy": "KT start, 0.1 ArcFace + 0.9 Hinton (T = 4), legacy teacher, 800 steps",
    "kt_hinton_mbf": "KT start, 0.1 ArcFace + 0.9 Hinton (T = 4), mbf.onnx teacher, 800 steps",
    "kt_hinton_ens": "KT start, 0.1 ArcFace + 0.9 Hinton (T = 4), mbf + mfn + legacy ensemble",
    "kt_emb_adamw_40": "kt_emb_adamw with the student fed 40-px faces",
    "scratch_b64_40": "scratch_b64 at 40 px",
    "kt_emb_adamw_32": "kt_emb_adamw with the student fed 32-px faces",
    "scratch_b64_32": "scratch_b64 at 32 px",
    "kt_init_ls1": "KT student with the 7x7 last map (last_stride 1) before training",
    "kt_emb_adamw_fp32": "kt_emb_adamw in float32 (no bf16 autocast)",
    "kt_emb_ls1": "kt_emb_adamw_fp32, 7x7 last map (last_stride 1, 0.131 GFLOPs), 800 steps",
    "kt_emb_ls1_long": "kt_emb_adamw_long, 7x7 last map (last_stride 1, 0.131 GFLOPs), float32",
    "kt_emb_adamw_64": "kt_emb_adamw_fp32 with the student fed 64-px faces",
    "scratch_b64_64": "scratch_b64 at 64 px, float32",
    "kt_emb_adamw_80": "kt_emb_adamw_fp32 with the student fed 80-px faces",
    "scratch_b64_80": "scratch_b64 at 80 px, float32",
    "kt_emb_adamw_64_long": "kt_emb_adamw_long with the student fed 64-px faces, float32",
}
REFERENCES = ("teacher@112", "teacher@56", "kt_init")


def label(row: str) -> str:
    """What a row is (``LABELS``); ``teacher@<side>``, ``<arch>@<side>`` and
    ``kt_init_<side>`` for any side."""
    if (side := row.removeprefix("kt_init_")).isdigit():
        return f"KT student before training (teacher weights at {side} px)"
    if row not in LABELS and "@" in row:
        who, side = row.split("@")
        who = "teacher" if who == "teacher" else f"{who} teacher (its KT students' own)"
        if side == "112":
            return f"{who}, 112-px faces (reference)"
        return f"{who} fed the same {side}-px faces (no training)"
    return LABELS[row]


def reference_of(name: str, students: Path | None = None) -> str:
    """The 112-px teacher a model is compared with: ``<arch>@112`` for a student (or a
    reference row) of an ``OTHER_TEACHERS`` architecture, else ``teacher@112``."""
    from karlekar_eval import OTHER_TEACHERS

    if "@" in name:
        arch = name.split("@")[0]
    elif students is not None and (students / f"{name}.pt").exists():
        from facekd.models.checkpoints import load_backbone

        arch = getattr(load_backbone(students / f"{name}.pt"), "arch", "")
    else:
        arch = ""
    return f"{arch}@112" if arch in OTHER_TEACHERS else "teacher@112"


def embedding_cosine(
    runs: Path, name: str, set_name: str = "lfw", reference: str = "teacher@112"
) -> float:
    """Mean cosine between a model's embeddings of a set's faces and the 112-px teacher's
    (``reference``; both cached by ``embed_sets``): how closely the student reproduces it."""
    a = np.load(runs / "emb" / f"{name}.npz")[set_name]
    b = np.load(runs / "emb" / f"{reference}.npz")[set_name]
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, axis=1)))


def schedule(runs: Path, row: str, seeds, config_of=None) -> str:
    """``"sgd 0.01, 300 x 32"``: optimizer, base lr, steps x batch (+ ``bf16``) of a trained
    row, read from its run's saved ``config.yaml``, else (a student trained on another
    machine, its run folder gone) from ``config_of(row, seed)``, the config that trains it;
    ``-`` for the references."""
    if not seeds:
        return "-"
    saved = runs / f"{row}_seed{seeds[0]}" / "config.yaml"
    if saved.exists() or config_of is None:
        cfg = yaml.safe_load(saved.read_text())
    else:
        cfg = config_of(row, seeds[0])
    tr, data = cfg["train"], cfg["data"]
    amp = f", {tr['amp']}" if tr.get("amp", "none") != "none" else ""
    return f"{tr['optimizer']} {tr['lr']:g}, {tr['steps']} x {data['batch_size']}{amp}"


def summarise(
    seeds_of: dict, per_model: dict, names, prefix: str, references=REFERENCES
) -> list[dict]:
    """One line per row: mean ± std (sample) over the row's seeds and the per-seed values;
    first the untrained ``references`` (one value each)."""
    lines = []
    for key in references:
        line = {"row": key, "seeds": None}
        for s in names:
            line[f"{s}_mean"], line[f"{s}_std"] = per_model[key][s]["acc"], None
        lines.append(line)
    for row, seeds in seeds_of.items():
        line = {"row": row, "seeds": list(seeds)}
        for s in names:
            vals = [per_model[f"{prefix}{row}_seed{k}"][s]["acc"] for k in seeds]
            line[f"{s}_mean"] = float(np.mean(vals))
            line[f"{s}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
            line[f"{s}_per_seed"] = vals
        lines.append(line)
    return lines


def paired(
    seeds_of: dict, decisions: dict, names, prefix: str, comparisons=COMPARISONS
) -> list[dict]:
    """Per comparison ``(A, B)`` and set: the seeds both rows trained at, McNemar per seed,
    sign test."""
    tests = []
    for a, b in comparisons:
        if a not in seeds_of or b not in seeds_of:
            continue
        seeds = [k for k in seeds_of[a] if k in seeds_of[b]]
        for s in names:
            da = np.stack([decisions[f"{prefix}{a}_seed{k}"][s] for k in seeds])
            db = np.stack([decisions[f"{prefix}{b}_seed{k}"][s] for k in seeds])
            tests.append(
                {
                    "a": a, "b": b, "set": s, "seeds": seeds,
                    "delta_points_per_seed": [
                        float(100 * (x.mean() - y.mean())) for x, y in zip(da, db, strict=True)
                    ],
                    "mcnemar_per_seed": [dict(seed=k, **mcnemar(x, y))
                                         for k, x, y in zip(seeds, da, db, strict=True)],
                    "sign_test": sign_test(da, db),
                }
            )  # fmt: skip
    return tests


def verdict(t: dict) -> str:
    """One sentence per test, built from its numbers; a difference counts as a win only
    when every seed agrees and the sign test over pairs has p < 0.05."""
    d = float(np.mean(t["delta_points_per_seed"]))
    won = sum(x > 0 for x in t["delta_points_per_seed"])
    n = len(t["delta_points_per_seed"])
    st = t["sign_test"]
    sig = st["p"] < 0.05
    if sig and won == n and d > 0:
        word = "beats"
    elif sig and won == 0 and d < 0:
        word = "loses to"
    else:
        word = "does not separate from"
    return (
        f"**{t['a']} {word} {t['b']} on {t['set']}**: {d:+.2f} points (mean over {n} seed(s)), "
        f"ahead in {won} of {n}; sign test over pairs {st['a_better']} / {st['b_better']}, "
        f"p = {_p(st['p'])}."
    )


def accuracy_table(lines, names, what: dict, schedule_of) -> list[str]:
    """Markdown rows of the mean ± std accuracy table: ``what[row]`` describes the row,
    ``schedule_of(row, seeds)`` gives its training schedule."""
    md = [
        "## Accuracy (%), mean ± std over seeds\n",
        "| row | what | schedule | seeds | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for line in lines:
        r = line["row"]
        seeds = ",".join(map(str, line["seeds"])) if line["seeds"] else "-"
        sched = schedule_of(r, line["seeds"]) if line["seeds"] else "-"
        md.append(f"| {r} | {what[r]} | {sched} | {seeds} | "
                  + " | ".join(_pm(line, n) for n in names) + " |")  # fmt: skip
    return md


def sign_test_table(tests) -> list[str]:
    """Markdown of the paired tests (Δ per seed, sign test over pairs) and their verdicts."""
    md = ["\n![accuracy](accuracy.png)\n\n## Paired tests on the per-pair decisions\n",
          "| A vs B | set | Δ per seed (points) | sign test (A / B pairs, p) |",
          "|---|---|---|---|"]  # fmt: skip
    for t in tests:
        st = t["sign_test"]
        deltas = ", ".join(f"{v:+.2f}" for v in t["delta_points_per_seed"])
        md.append(f"| {t['a']} vs {t['b']} | {t['set']} | {deltas} | "
                  f"{st['a_better']} / {st['b_better']}, p = {st['p']:.2g} |")  # fmt: skip
    md.append("\n" + "\n".join(f"- {verdict(t)}" for t in tests) + "\n")
    return md


def first_students(students: Path, prefix: str, seeds_of: dict) -> dict:
    """``{row: its first seed's saved student}``: the network each row trained (one load per
    row, shared by the cost line and the sides named in the report)."""
    from facekd.models.checkpoints import load_backbone

    return {r: load_backbone(students / f"{prefix}{r}_seed{k[0]}.pt") for r, k in seeds_of.items()}


def student_gflops(models: dict) -> str:
    """GFLOPs of one face for each distinct student network among ``{row: model}``, and its
    rows."""
    from facekd.evaluation.profile import count_flops

    rows_of: dict = {}
    for row, model in models.items():
        key = (model.arch, json.dumps(model.arch_kwargs, sort_keys=True))
        if key not in rows_of:
            rows_of[key] = [count_flops(model, model.input_size) / 1e9, model, []]
        rows_of[key][2].append(row)
    return "; ".join(
        f"{model.arch} at {model.input_size} px"
        + (", last_stride 1" if model.arch_kwargs.get("last_stride") == 1 else "")
        + f" {gflops:.3f} GFLOPs ({', '.join(rows)})"
        for gflops, model, rows in rows_of.values()
    )


def student_sides(models: dict) -> str:
    """The input sides of ``{row: model}`` in words: ``"56"``, ``"56, 64 and 80"``."""
    words = [str(s) for s in sorted({m.input_size for m in models.values()})]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def write_embedding_kd_report(
    rows: dict, runs: Path, students: Path, prefix: str, sets, out: Path, times: dict, *,
    prep_seconds: float, wall_start: float, train_cfg: dict, config_of=None,
    command: str = ".venv/bin/python benchmarks/bench_embedding_kd.py",
) -> Path:  # fmt: skip
    """Report ``rows`` (``{row: seeds}``) on the students saved in ``students``; a row whose
    files are missing is left out. ``config_of(row, seed)``: the config of a student whose run
    folder (saved config, ``log.csv``) is not on this machine; such rows get no log line."""
    out.mkdir(parents=True, exist_ok=True)
    names = [ps.name for ps in sets]
    seeds_of = {
        r: [k for k in seeds if (students / f"{prefix}{r}_seed{k}.pt").exists()]
        for r, seeds in rows.items()
    }
    seeds_of = {r: s for r, s in seeds_of.items() if s}
    trained = [prefix + r for r in seeds_of]
    per_model, decisions, _ = evaluate_all(
        trained, {prefix + r: s for r, s in seeds_of.items()}, runs, students, sets
    )
    refs = tuple(k for k in per_model if "@" in k or k.startswith("kt_init"))
    lines = summarise(seeds_of, per_model, names, prefix, references=refs)
    tests = paired(seeds_of, decisions, names, prefix)
    cos = {  # each to its own teacher (the legacy model's, or mbf.onnx's for its students)
        r: float(np.mean([
            embedding_cosine(runs, n, reference=reference_of(n, students))
            for n in (f"{prefix}{r}_seed{k}" for k in s)
        ]))
        for r, s in seeds_of.items()
    }  # fmt: skip
    cos |= {r: embedding_cosine(runs, r, reference=reference_of(r)) for r in refs}
    keys = ("ce", "kd/embedding", "img_per_s")
    logged = {r: [k for k in s if (runs / f"{r}_seed{k}" / "log.csv").exists()]
              for r, s in seeds_of.items()}  # fmt: skip
    logs = {r: [log_summary(runs / f"{r}_seed{k}", keys=keys) for k in s]
            for r, s in logged.items() if s}  # fmt: skip
    networks = first_students(students, prefix, seeds_of)
    at = student_sides(networks)
    plot_rows(
        lines, names, out / "accuracy.png",
        f"Embedding distillation, legacy MobileFaceNet at {at} px: mean ± std over seeds",
    )  # fmt: skip
    tr, data = train_cfg["train"], train_cfg["data"]
    n_train = sum(1 for _ in Path(data["path"]).rglob("*.jpg"))
    n_ids = sum(1 for d in Path(data["path"]).iterdir() if d.is_dir())
    md = [
        f"# Embedding distillation on every training photo: the legacy MobileFaceNet at {at} px\n",
        f"- Training: {n_train} aligned photos of {n_ids} identities (CelebA-299 + "
        "CelebA-tight-1756, facekd's MTCNN + ArcFace template; tight crops padded 40 %); every "
        f"student (unless its schedule column says otherwise) {tr['steps']} steps of batch "
        f"{data['batch_size']} ({tr['steps'] * data['batch_size'] / n_train:.2f} epochs), "
        f"warm-up {tr['warmup_steps']}, cosine decay, {tr['optimizer']}, clip 5, ArcFace "
        "s = 32, m = 0.3 where used (METHODS 2.5). Seed k = one batch order and flip sequence "
        "for every row of a schedule, and one start within each pair.",
        "- Embedding mimic: `1 - cos(e_s, e_t)` between the student's embedding of the face "
        f"at its side ({at} px) and the 112-px teacher's (cached, both flip views; "
        "`kt_emb_fm`: the teacher run online on the same augmented view). L2 on normalised "
        "embeddings is the same loss at twice the weight (`|a - b|^2 = 2 - 2 cos` for unit "
        "vectors).",
        '- Verification: insightface protocol, grid thresholds (`verify(thresholds="grid")`), '
        "official folds; " + ", ".join(f"{ps.name} {len(ps)} pairs" for ps in sets) + ".",
        f"- Preparation {prep_seconds:.0f} s of this run; {platform.machine()}, shared machine.\n",
        "## Accuracy (%), mean ± std over seeds\n",
        "| row | what | schedule | seeds | " + " | ".join(names) + " | emb. cos to teacher (LFW) |",
        "|---|---|---|---|" + "---|" * (len(names) + 1),
    ]
    for line in lines:
        r = line["row"]
        seeds = ",".join(map(str, line["seeds"])) if line["seeds"] else "-"
        md.append(
            f"| {r} | {label(r)} | {schedule(runs, r, line['seeds'], config_of)} | {seeds} | "
            + " | ".join(_pm(line, n) for n in names)
            + f" | {cos[r]:.3f} |"
        )
    md.append("\n![accuracy](accuracy.png)\n\n## Paired tests on the per-pair decisions\n")
    md += [
        "| A vs B | set | seeds | Δ per seed (points) | McNemar per seed (A only / B only, p) "
        "| sign test (A / B pairs, p) |",
        "|---|---|---|---|---|---|",
    ]
    for t in tests:
        mc = "; ".join(f"{m['a_only']}/{m['b_only']}, {_p(m['p'])}" for m in t["mcnemar_per_seed"])
        st = t["sign_test"]
        md.append(
            f"| {t['a']} vs {t['b']} | {t['set']} | {','.join(map(str, t['seeds']))} | "
            + ", ".join(f"{v:+.2f}" for v in t["delta_points_per_seed"])
            + f" | {mc} | {st['a_better']} / {st['b_better']}, {_p(st['p'])} |"
        )
    md.append("\n" + "\n".join(f"- {verdict(t)}" for t in tests) + "\n")
    compared = {(t["a"], t["b"]) for t in tests}
    for declared, what in (
        (PRECISION_PAIRS, "that also differ in precision (float32 against bf16 autocast)"),
        (
            SIDE_PAIRS,
            "of students fed faces of different sides (the same photos in the same order)",
        ),
    ):
        if pairs := sorted(compared & declared):
            md.append(f"Pairs {what}: " + "; ".join(f"{a} vs {b}" for a, b in pairs) + ".\n")
    md.append("## What the logs show (first → last logged steps, mean over seeds)\n")
    for r, ls in logs.items():
        parts = []
        if "ce_first" in ls[0]:
            parts.append(
                f"ArcFace loss {np.mean([x['ce_first'] for x in ls]):.2f} → "
                f"{np.mean([x['ce_last'] for x in ls]):.2f}"
            )
        if "kd/embedding_first" in ls[0]:
            first = 1 - np.mean([x["kd/embedding_first"] for x in ls])
            last = 1 - np.mean([x["kd/embedding_last"] for x in ls])
            parts.append(f"embedding cosine to the teacher on the training faces {first:.3f} → "
                         f"{last:.3f}")  # fmt: skip
        parts.append(f"{np.mean([x['img_per_s_last'] for x in ls]):.0f} training img/s")
        md.append(f"- **{r}**: " + "; ".join(parts) + ".")
    if unlogged := [r for r in seeds_of if r not in logs]:
        md.append(f"- No training log on this machine for {', '.join(unlogged)} (trained in an "
                  "earlier session; the saved students are evaluated all the same).")  # fmt: skip
    secs = {k: v for k, v in times.items() if v is not None}
    wall = time.perf_counter() - wall_start
    flops = student_gflops(networks)
    md.append(
        f"\nCost per face (`torch.utils.flop_counter`): {flops}"
        "; the teacher at 112 px 0.442 GFLOPs. Latency (eager torch and onnxruntime) of the "
        "network at each side: `sides/report.md` (`benchmarks/bench_sides.py`). "
        f"Command: `{command}`; this report took {wall / 60:.1f} min.\n"
    )
    path = out / "report.md"
    path.write_text("\n".join(md))
    report = {
        "rows": lines, "per_model": per_model, "paired_tests": tests,
        "verdicts": [verdict(t) for t in tests], "embedding_cosine_lfw": cos, "logs": logs,
        "train_seconds": secs, "seeds": seeds_of, "steps": tr["steps"],
        "batch": data["batch_size"], "train_photos": n_train, "identities": n_ids,
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    return path
