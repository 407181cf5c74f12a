"""``bench_int8.py``'s report: ``report.md`` (accuracy, cosine, size, speed) + ``speed.png``."""

from __future__ import annotations

from pathlib import Path

SETS = ("lfw_mini", "cfp_fp_mini")
PAIRINGS = (
    ("fp32", "fp32"),
    ("int8", "int8"),
    ("fp32_gallery_int8_probe", "fp32 gal / int8 probe"),
)


def _acc(info: dict, name: str, pairing: str) -> float:
    return 100 * info["accuracy"][name][pairing]["grid"]["accuracy"]


def accuracy_cell(acc: dict) -> str:
    """``"99.67 -> 99.58 (99.67)"``: fp32 -> int8 (fp32 gallery / int8 probe) accuracy in %,
    grid thresholds, from one ``facekd.deploy.pair_accuracies`` result."""
    a = {k: 100 * acc[k]["grid"]["accuracy"] for k, _ in PAIRINGS}
    return f"{a['fp32']:.2f} -> {a['int8']:.2f} ({a['fp32_gallery_int8_probe']:.2f})"


def accuracy_rows(res: dict) -> list[str]:
    head = "| model | recipe | size MB (x smaller) | cosine mean / p1 / min |"
    head += "".join(f" {s} {label} |" for s in SETS for _, label in PAIRINGS)
    lines = [head, "|" + "---|" * (4 + len(SETS) * len(PAIRINGS))]
    for model, row in res["models"].items():
        for recipe, info in row["recipes"].items():
            cos = info["cosine_to_fp32_held_back"]["int8"]
            cells = [
                model, recipe,
                f"{info['bytes']['int8'] / 1e6:.2f} ({info['size_ratio']:.2f}x)",
                f"{cos['mean']:.4f} / {cos['p1']:.4f} / {cos['min']:.4f}",
            ]  # fmt: skip
            for s in SETS:
                base = _acc(info, s, "fp32")
                for key, _ in PAIRINGS:
                    a = _acc(info, s, key)
                    cells.append(f"{a:.2f}" if key == "fp32" else f"{a:.2f} ({a - base:+.2f})")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def speed_rows(res: dict) -> list[str]:
    lines = ["| model | runtime | b1 ms | b64 ms | b64 vs ORT fp32 | b64 vs eager torch |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for model, row in res["models"].items():
        lat = row["latency_ms"]
        for name, cells in lat.items():
            b1, b64 = cells.get(1, cells.get("1")), cells.get(64, cells.get("64"))
            f64 = lat["ort_fp32"].get(64, lat["ort_fp32"].get("64"))
            t64 = lat["torch"].get(64, lat["torch"].get("64"))
            lines.append(f"| {model} | {name} | {b1:.1f} | {b64:.1f} | {f64 / b64:.2f}x | "
                         f"{t64 / b64:.2f}x |")  # fmt: skip
    return lines


def plot_speed(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res["models"]), figsize=(5.5 * len(res["models"]), 3.6))
    for ax, (model, row) in zip(
        list(getattr(axes, "flat", [axes])), res["models"].items(), strict=True
    ):
        lat = row["latency_ms"]
        names = list(lat)
        f64 = lat["ort_fp32"].get(64, lat["ort_fp32"].get("64"))
        vals = [f64 / lat[n].get(64, lat[n].get("64")) for n in names]
        ax.barh(names, vals, color=["#999" if "int8" not in n else "#2a7" for n in names])
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(f"{model}: speed vs onnxruntime fp32, batch 64")
        ax.set_xlabel("x faster (same run, interleaved)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(res: dict, out: Path) -> str:
    plot_speed(res, out / "speed.png")
    text = "\n".join([
        "# int8 face models: accuracy, cosine, size and speed (onnxruntime, CPU)", "",
        f"Command: `{res['command']}` ({res['wall_seconds']} s), {res['threads']} threads for "
        "torch and onnxruntime. Calibration: CelebA-299 aligned crops (identities disjoint from "
        "LFW / CFP); cosine: raw int8 vs fp32 embeddings on held-back calibration-source faces. "
        "Accuracy: 2 official folds, flip-sum, insightface threshold grid (exact search in "
        "report.json); the fp32 gallery / int8 probe column embeds the first face of each pair "
        "with fp32 and the second with int8.", "",
        *accuracy_rows(res), "",
        "Latency (medians, every runtime interleaved in one run on a shared 2-core machine: "
        "the ratios are the result, the milliseconds move with the load):", "",
        *speed_rows(res), "", "![speed](speed.png)", "",
    ])  # fmt: skip
    (out / "report.md").write_text(text)
    return text
