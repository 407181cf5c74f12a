"""Reports people read: one Markdown table + the same rows as JSON + PNG charts.

Every number comes from the caller's measurements; this module only lays them out:

* ``write_report(rows, out_dir, ...)`` -> ``report.md`` and ``report.json``;
* ``plot_accuracy(rows, path, columns)`` -> grouped bar chart (one group per model);
* ``plot_roc(curves, path)`` -> ROC curves (false accept rate on a log axis).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[tuple[str, str]]) -> str:
    """``columns``: (key, header) pairs; missing keys print as an em dash."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_report(
    rows: Sequence[Mapping],
    out_dir: str | Path,
    *,
    title: str,
    columns: Sequence[tuple[str, str]],
    notes: Sequence[str] = (),
    images: Sequence[str] = (),
    extra: Mapping | None = None,
) -> Path:
    """Write ``report.md`` (title, notes, table, images) and ``report.json``; returns the .md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", markdown_table(rows, columns), ""]
    lines += [f"![{Path(i).stem}]({Path(i).name})" for i in images]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    payload = {"title": title, "notes": list(notes), "rows": list(rows), **(extra or {})}
    (out / "report.json").write_text(json.dumps(_jsonable(payload), indent=1))
    return out / "report.md"


def plot_accuracy(
    rows: Sequence[Mapping],
    path: str | Path,
    columns: Sequence[tuple[str, str]],
    label_key: str = "model",
    title: str = "",
) -> Path:
    """Grouped bars: for each row (model) one bar per ``columns`` key (e.g. full / low res)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(r[label_key]) for r in rows]
    x = np.arange(len(rows))
    width = 0.8 / max(1, len(columns))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    values_all = []
    for i, (key, header) in enumerate(columns):
        values = [float(r.get(key) or np.nan) * 100 for r in rows]
        values_all += [v for v in values if not np.isnan(v)]
        bars = ax.bar(x + (i - (len(columns) - 1) / 2) * width, values, width, label=header)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    low = max(0.0, min(values_all, default=50) - 5)
    ax.set_ylim(low, 100)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel("verification accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = ""
) -> Path:
    """ROC curves ``{name: (fpr, tpr)}`` with the false accept rate on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (fpr, tpr) in curves.items():
        fpr = np.asarray(fpr)
        keep = fpr > 0
        ax.plot(fpr[keep], np.asarray(tpr)[keep], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
