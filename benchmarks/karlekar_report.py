"""Report of ``bench_karlekar.py``: per-seed evaluation, mean ± std per row, paired tests on
the per-pair decisions, cost, what the logs show; Markdown + JSON + PNG.

Every number is computed here from the saved students (float16 files loaded into float32),
the teacher and the packed ``.bin`` files; nothing is typed in. Accuracies use insightface's
threshold grid (``verify(thresholds="grid")``) with each set's official folds; the exact
search is kept in the JSON.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
from karlekar_eval import (  # noqa: F401 - embed_sets, reference_models: the driver's
    LOW,
    cost,
    embed_sets,
    evaluate_all,
    log_summary,
    mcnemar,
    reference_models,
    sign_test,
)

SETS = ("lfw", "cfp_ff", "cfp_fp")
TESTED_SETS = ("lfw", "cfp_fp")  # the paired tests (the two checks)
COMPARISONS = (("kt_pooled", "scratch"), ("kt_pooled", "kt_arcface"), ("kt_arcface", "scratch"))
LABELS = {
    "teacher@112": "teacher, 112-px faces (reference)",
    "teacher@56": "teacher fed the same 56-px faces (no training)",
    "kt_init": "KT student before training (teacher weights at 56 px)",
    "kt_pooled": "KT + pooled-feature transfer + ArcFace (Karlekar KT+KD)",
    "kt_arcface": "KT + ArcFace only (Karlekar KT)",
    "scratch": "same architecture at 56 px from scratch, ArcFace only",
}


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None


def aggregate(rows, seeds, per_model: dict, names) -> list[dict]:
    """One line per row: mean ± std over seeds (sample std) and the per-seed values."""
    out = []
    for key in ("teacher@112", "teacher@56", "kt_init"):
        line = {"row": key, "seeds": None}
        for s in names:
            line[f"{s}_mean"], line[f"{s}_std"] = per_model[key][s]["acc"], None
        out.append(line)
    for row in rows:
        line = {"row": row, "seeds": list(seeds)}
        for s in names:
            vals = [per_model[f"{row}_seed{k}"][s]["acc"] for k in seeds]
            line[f"{s}_mean"], line[f"{s}_std"] = _mean_std(vals)
            line[f"{s}_per_seed"] = vals
        out.append(line)
    return out


def paired_tests(seeds, decisions: dict, names) -> list[dict]:
    """McNemar per seed (same seed = same start and batches) and the sign test over pairs."""
    tests = []
    for a, b in COMPARISONS:
        for s in (n for n in TESTED_SETS if n in names):
            da = np.stack([decisions[f"{a}_seed{k}"][s] for k in seeds])
            db = np.stack([decisions[f"{b}_seed{k}"][s] for k in seeds])
            per_seed = [dict(seed=k, **mcnemar(da[i], db[i])) for i, k in enumerate(seeds)]
            tests.append(
                {
                    "a": a,
                    "b": b,
                    "set": s,
                    "pairs": int(da.shape[1]),
                    "mcnemar_per_seed": per_seed,
                    "sign_test": sign_test(da, db),
                    "delta_points_per_seed": [
                        100 * (da[i].mean() - db[i].mean()) for i in range(len(seeds))
                    ],
                }
            )
    return tests


def plot_rows(lines: list[dict], names, path: Path, title: str) -> Path:
    """Grouped bars, mean ± std over seeds (error bars) per row and set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(lines))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    lows = []
    for i, s in enumerate(names):
        means = [100 * r[f"{s}_mean"] for r in lines]
        errs = [100 * (r[f"{s}_std"] or 0.0) for r in lines]
        lows += means
        bars = ax.bar(
            x + (i - (len(names) - 1) / 2) * width, means, width, yerr=errs, capsize=3, label=s
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_ylim(max(0.0, min(lows) - 8), 100)
    ax.set_xticks(x, [r["row"] for r in lines], rotation=15, ha="right")
    ax.set_ylabel("verification accuracy (%), grid thresholds")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pm(line: dict, s: str) -> str:
    mean, std = 100 * line[f"{s}_mean"], line[f"{s}_std"]
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {100 * std:.2f}"


def _p(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def verdict_lines(lines: list[dict], tests: list[dict], names) -> list[str]:
    """Does it help, by how much: every sentence built from the numbers above it."""
    by = {r["row"]: r for r in lines}
    out = []
    for t in tests:
        a, b, s = t["a"], t["b"], t["set"]
        d = 100 * (by[a][f"{s}_mean"] - by[b][f"{s}_mean"])
        seeds_won = sum(x > 0 for x in t["delta_points_per_seed"])
        sig = sum(m["p"] < 0.05 for m in t["mcnemar_per_seed"])
        st = t["sign_test"]
        word = "above" if d > 0 else "below" if d < 0 else "level with"
        out.append(
            f"**{a} vs {b}, {s}**: {a} is {word} {b}, {d:+.2f} points (mean over seeds); "
            f"ahead in {seeds_won} of {len(t['delta_points_per_seed'])} seeds; McNemar p < 0.05 "
            f"in {sig} of {len(t['mcnemar_per_seed'])} seeds; sign test over pairs: "
            f"{st['a_better']} pairs favour {a}, {st['b_better']} favour {b}, p = {_p(st['p'])}."
        )
    return out


def decomposition_lines(lines: list[dict], names) -> list[str]:
    """Where kt_pooled's lead over scratch comes from: the KT start (kt_arcface - scratch) and
    the pooled term on top (kt_pooled - kt_arcface); and how far it stays from the teacher."""
    by = {r["row"]: r for r in lines}
    out = []
    for s in names:
        kt = 100 * (by["kt_arcface"][f"{s}_mean"] - by["scratch"][f"{s}_mean"])
        pool = 100 * (by["kt_pooled"][f"{s}_mean"] - by["kt_arcface"][f"{s}_mean"])
        gap = 100 * (by["teacher@56"][f"{s}_mean"] - by["kt_pooled"][f"{s}_mean"])
        rec = 100 * (by["kt_pooled"][f"{s}_mean"] - by["kt_init"][f"{s}_mean"])
        out.append(
            f"**{s}**: of kt_pooled's {kt + pool:+.2f} points over scratch, knowledge transfer "
            f"(kt_arcface - scratch) gives {kt:+.2f} and the pooled term on top (kt_pooled - "
            f"kt_arcface) {pool:+.2f}; training moved the KT start by {rec:+.2f}; kt_pooled "
            f"stays {gap:.2f} points below the teacher fed the same 56-px faces."
        )
    return out


def write_karlekar_report(
    rows,
    seeds,
    work: Path,
    runs: Path,
    students: Path,
    sets,
    out: Path,
    times: dict,
    *,
    train_cfg: dict,
    quick: bool,
    command: str,
    prep_seconds: float,
    wall_start: float,
) -> Path:
    import yaml
    from bench_karlekar import CONFIGS

    from facekd.models.checkpoints import load_backbone

    out.mkdir(parents=True, exist_ok=True)
    names = [ps.name for ps in sets]
    per_model, decisions, pooled = evaluate_all(rows, seeds, runs, students, sets)
    lines = aggregate(rows, seeds, per_model, names)
    tests = paired_tests(seeds, decisions, names)
    logs = {f"{r}_seed{k}": log_summary(runs / f"{r}_seed{k}") for r in rows for k in seeds}
    student = load_backbone(students / f"{rows[0]}_seed{seeds[0]}.pt")
    from bench_real_distill import TEACHER

    costs = cost(load_backbone(str(TEACHER)), student, quick)
    sizes = {p.name: p.stat().st_size for p in sorted(students.glob("*.pt"))}
    lrs = {
        r: (yaml.safe_load((CONFIGS / f"{r}.yaml").read_text()) or {})
        .get("train", {})
        .get("lr", train_cfg["train"]["lr"])
        for r in rows
    }
    tr, data = train_cfg["train"], train_cfg["data"]
    n_train = sum(1 for _ in (work / "train_aligned").rglob("*.jpg"))
    n_ids = sum(1 for d in (work / "train_aligned").iterdir() if d.is_dir())
    plot_rows(
        lines,
        names,
        out / "accuracy.png",
        f"Karlekar HR->LR, legacy MobileFaceNet at {LOW} px: mean ± std over {len(seeds)} seed(s)",
    )
    by = {r["row"]: r for r in lines}
    m = costs["models"]
    t, s = m["teacher@112"], m["student@56"]

    title = f"Karlekar HR→LR on real faces: the legacy MobileFaceNet at {LOW} px"
    md = [f"# {title}, {len(seeds)} seed(s)\n"]
    if quick:
        md.append(
            "**QUICK SMOKE RUN** (a few identities, steps and pairs): the numbers mean nothing.\n"
        )
    md += [
        f"- Training: {n_train} aligned CelebA photos of {n_ids} identities (facekd's MTCNN + "
        f"ArcFace template, 112 px); every student {tr['steps']} steps of batch "
        f"{data['batch_size']}, warm-up {tr['warmup_steps']}, cosine decay, SGD momentum 0.9, "
        f"ArcFace s = 32, m = 0.3; base lr {', '.join(f'{r} {v}' for r, v in lrs.items())} "
        "(fine-tuning after KT, METHODS 2.5). Seeds "
        f"{', '.join(map(str, seeds))}: one seed = one batch order and flip sequence for every row "
        "and one start for both KT rows.",
        "- Student: the teacher's architecture (legacy InsightFace MobileFaceNet, 128-d) fed "
        f"{LOW}-px faces (the aligned crop down-sampled, INTER_AREA); KT copies every tensor and "
        "resamples the 7x7 GDC kernel to 4x4 (sum-preserving). Pooled transfer: normalised MSE "
        "between the student's GAP(conv_sep) on the 56-px face and the cached teacher's on the "
        "112-px face, weight 50.",
        '- Verification: insightface protocol, grid thresholds (`verify(thresholds="grid")`), '
        "the sets' official folds; "
        + ", ".join(f"{ps.name} {len(ps)} pairs" for ps in sets)
        + ". Students are evaluated from their saved float16 files (`students/`).",
        f"- Preparation {prep_seconds:.0f} s of this run; machine {platform.machine()}, "
        f"{costs['environment'].get('threads', '?')} threads, shared with other jobs.\n",
        "## Accuracy (%), mean ± std over seeds\n",
        "| row | what | "
        + " | ".join(names)
        + " | pooled cos to teacher (LFW) | train s / student |",
        "|---|---|" + "---|" * (len(names) + 2),
    ]
    for line in lines:
        r = line["row"]
        pc = [pooled.get(f"{r}_seed{k}") for k in seeds] if line["seeds"] else [pooled.get(r)]
        pc = [v for v in pc if v is not None]
        secs = [times.get(f"{r}_seed{k}") for k in seeds] if line["seeds"] else []
        secs = [v for v in secs if v is not None]
        md.append(
            f"| {r} | {LABELS[r]} | "
            + " | ".join(_pm(line, n) for n in names)
            + f" | {np.mean(pc):.3f} | "
            + (f"{np.mean(secs):.0f}" if secs else "-")
            + " |"
            if pc
            else f"| {r} | {LABELS[r]} | " + " | ".join(_pm(line, n) for n in names) + " | - | - |"
        )
    md.append(
        "\nPer seed (LFW / CFP-FP): "
        + "; ".join(
            f"{line['row']} "
            + ", ".join(
                f"{100 * a:.2f}/{100 * b:.2f}"
                for a, b in zip(
                    line.get("lfw_per_seed", []), line.get("cfp_fp_per_seed", []), strict=False
                )
            )
            for line in lines
            if line["seeds"]
        )
        + ".\n"
    )
    md.append("![accuracy](accuracy.png)\n\n## Paired tests on the per-pair decisions\n")
    md.append(
        "Same seed = same batches (and, for the two KT rows, the same start): McNemar's exact "
        "test per seed on the pairs one model gets right and the other wrong, and a sign test "
        "over pairs on the seed-averaged correctness.\n"
    )
    md += [
        "| A vs B | set | Δ mean (points) | Δ per seed | McNemar per seed (A only / B only, p) "
        "| sign test (A / B pairs, p) |",
        "|---|---|---|---|---|---|",
    ]
    for t_ in tests:
        by_seed = "; ".join(
            f"{x['a_only']}/{x['b_only']}, {_p(x['p'])}" for x in t_["mcnemar_per_seed"]
        )
        st = t_["sign_test"]
        d = 100 * (by[t_["a"]][f"{t_['set']}_mean"] - by[t_["b"]][f"{t_['set']}_mean"])
        md.append(
            f"| {t_['a']} vs {t_['b']} | {t_['set']} | {d:+.2f} | "
            + ", ".join(f"{v:+.2f}" for v in t_["delta_points_per_seed"])
            + f" | {by_seed} | {st['a_better']} / {st['b_better']}, {_p(st['p'])} |"
        )
    md.append("\n" + "\n".join(f"- {v}" for v in verdict_lines(lines, tests, names)) + "\n")
    md.append("Where the gain comes from (means over seeds):\n")
    md.append("\n".join(f"- {v}" for v in decomposition_lines(lines, names)) + "\n")
    md += [
        "## Cost (the same for every 56-px row)\n",
        "| model | params | GFLOPs | eager fp32 b1 ms | eager fp32 b64 ms | onnxruntime b1 ms "
        "| onnxruntime b64 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in m.items():
        md.append(
            f"| {name} | {c['params']:,} | {c['gflops']:.3f} | "
            + " | ".join(
                f"{c[k]:.2f}" if c.get(k) is not None else "-"
                for k in ("eager_b1_ms", "eager_b64_ms", "ort_b1_ms", "ort_b64_ms")
            )
            + " |"
        )
    ratio = {
        k: t[k] / s[k]
        for k in ("gflops", "eager_b1_ms", "eager_b64_ms", "ort_b1_ms", "ort_b64_ms")
        if t.get(k) and s.get(k)
    }
    md.append(
        "\nTeacher / student: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items())
        + f"; the same parameters ({s['params']:,} vs {t['params']:,}: only the GDC kernel "
        "shrinks). Latency medians on this shared machine.\n"
    )
    md.append("## What the logs show\n")
    for r in rows:
        ls = [logs[f"{r}_seed{k}"] for k in seeds]

        def avg(key: str, ls=ls) -> float:
            return float(np.mean([x[key] for x in ls]))

        parts = [f"ArcFace loss {avg('ce_first'):.2f} → {avg('ce_last'):.2f}"]
        if "pooled_cos_first" in ls[0]:
            parts.append(
                "pooled cosine to the teacher on the training faces "
                f"{avg('pooled_cos_first'):.3f} → {avg('pooled_cos_last'):.3f}"
            )
        lfw_cos = np.mean([pooled[f"{r}_seed{k}"] for k in seeds])
        parts.append(f"pooled cosine to the teacher on LFW after training {lfw_cos:.3f}")
        parts.append(f"{avg('img_per_s_last'):.0f} training img/s")
        head = f"- **{r}** (first → last logged steps, mean over seeds): "
        md.append(head + "; ".join(parts) + ".")
    md.append(
        f"- **kt_init** (no training): pooled cosine {pooled['kt_init']:.3f}; "
        f"**teacher@56**: {pooled['teacher@56']:.3f}.\n"
    )
    md.append(
        "Saved students: "
        + ", ".join(f"`{k}` {v / 1e6:.2f} MB" for k, v in sizes.items())
        + f" ({sum(sizes.values()) / 1e6:.1f} MB in all, float16).\n"
    )
    wall = time.perf_counter() - wall_start
    md.append(f"Command: `.venv/bin/python {command}`; wall time {wall / 60:.1f} min.\n")
    path = out / "report.md"
    path.write_text("\n".join(md))
    report = {
        "protocol": "Karlekar HR->LR (arXiv:1906.00619), insightface grid thresholds",
        "rows": lines,
        "per_model": per_model,
        "paired_tests": tests,
        "pooled_cosine": pooled,
        "logs": logs,
        "cost": costs,
        "train_seconds": times,
        "student_files": sizes,
        "seeds": list(seeds),
        "steps": tr["steps"],
        "batch": data["batch_size"],
        "lr": lrs,
        "verdicts": verdict_lines(lines, tests, names),
        "decomposition": decomposition_lines(lines, names),
        "command": command,
        "wall_seconds": round(wall, 1),
        "quick": quick,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    return path
