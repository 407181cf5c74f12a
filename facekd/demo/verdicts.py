"""The demo's verdicts: every sentence computed from the run's own numbers.

A method *beats* its baseline when its accuracy on the held-out pairs is higher by more than
the tie band, the larger fold standard deviation of the two rows (the 10-fold protocol's own
spread); within the band it *ties*; below it *loses*. Rows are compared at the resolution the
method's student works at (``input_px``), against the baseline of ``setting.BASELINE``: the
same start and the same batches without the teacher's term.
"""

from __future__ import annotations

from facekd.demo.setting import BASELINE, DemoSize


def _acc(row: dict) -> tuple[float, float]:
    return row["synthetic_acc"], row.get("synthetic_std") or 0.0


def judge(row: dict, base: dict) -> tuple[str, float, float]:
    """``(word, delta, band)``: ``beats`` / ``ties`` / ``loses to``, accuracy difference, band."""
    (a, sa), (b, sb) = _acc(row), _acc(base)
    band, delta = max(sa, sb), a - b
    word = "beats" if delta > band else "ties" if delta >= -band else "loses to"
    return word, delta, band


def _trend(log: list[dict], key: str) -> tuple[float, float] | None:
    values = [r[key] for r in log if key in r]
    if not values:
        return None
    n = max(1, len(values) // 10)
    return sum(values[:n]) / n, sum(values[-n:]) / n


def method_verdicts(rows: list[dict], logs: dict[str, list[dict]] | None = None) -> list[str]:
    """One line per distillation row against its baseline (``BASELINE``), with the teacher's
    share recovered and the trend of the row's distillation term."""
    by = {r["model"]: r for r in rows}
    logs = logs or {}
    lines = []
    for name, ref_name in BASELINE.items():
        if name not in by or ref_name not in by:
            continue
        row, ref = by[name], by[ref_name]
        word, delta, band = judge(row, ref)
        a, b = _acc(row)[0], _acc(ref)[0]
        line = (
            f"**{name}** {word} {ref_name} at {row['input_px']} px: {a:.4f} vs {b:.4f} "
            f"({delta:+.4f}; tie band {band:.4f})"
        )
        teacher = by["teacher"]
        key = "synthetic_acc" if row["input_px"] >= teacher["input_px"] else (
            f"synthetic_acc@{row['input_px']}")  # fmt: skip
        gap = teacher.get(key, teacher["synthetic_acc"]) - b
        if gap > band:
            line += f"; it recovers {delta / gap:.0%} of the teacher's {gap:+.4f} lead"
        for term in sorted({k for r in logs.get(name, []) for k in r if k.startswith("kd/")}):
            first, last = _trend(logs[name], term)
            line += f"; {term} {first:.3g} -> {last:.3g}"
        lines.append(line + ".")
    return lines


def setting_paragraph(rows: list[dict], s: DemoSize) -> str:
    """What this run shows and what it cannot, from its numbers."""
    by = {r["model"]: r for r in rows}
    t, sc, sl = by["teacher"], by["scratch"], by.get("scratch_labelled", by["scratch"])
    wins = [ln.split("**")[1] for ln in method_verdicts(rows) if " beats " in ln]
    best = max((r for r in rows if r["model"] != "teacher"), key=lambda r: r["synthetic_acc"])
    return (
        f"The teacher learnt {s.identities} labelled people and scores "
        f"{t['synthetic_acc']:.4f} on held-out people; a student that has labels for only "
        f"{s.labelled} of them scores {sc['synthetic_acc']:.4f} ({sl['synthetic_acc']:.4f} when "
        "trained on their photos alone): the teacher is "
        f"{t['synthetic_acc'] - max(sc['synthetic_acc'], sl['synthetic_acc']):+.4f} ahead. "
        f"Given the teacher's outputs on all {s.identities * s.images_per_identity} photos, "
        f"{len(wins)} method(s) beat their no-teacher baseline by more than the fold spread "
        f"({', '.join(wins) or 'none'}); the best student is {best['model']} at "
        f"{best['synthetic_acc']:.4f}. This is Hinton's setting (scarce labels, plentiful "
        "teacher outputs) on synthetic cartoon faces: it shows that each method transfers "
        "what the teacher knows when the teacher knows more. It cannot rank the methods on "
        "real faces, say how much they gain with a real R100 teacher, or stand for accuracy "
        "on pose, age or lighting; benchmarks/results/real_distill/ measures real faces."
    )
