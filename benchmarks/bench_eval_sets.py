"""The evaluation sets facekd reports on, rebuilt and frozen, and the real models scored on them.

    raw photos -> data_prep builders (MTCNN, context padding decided per photo, ArcFace 112)
               -> <sets-dir>/{dev,lfw_mini,cfp_ff,cfp_fp}.bin + .manifest.json
                  (each build compared with its frozen manifest in benchmarks/sets/)
    models     -> flip-sum embeddings of every distinct face (facekd.evaluation.embed)
               -> protocol-fold accuracy, insightface grid (facekd.evaluation.verification)
               -> TAR@FAR 1e-3 / 1e-4 on all pairs of the set's faces (evaluation.all_pairs)

Models: the legacy InsightFace MobileFaceNet and the two ESP-DL MobileFaceNets (mbf / mfn,
ONNX) of ``../shared/data``, plus ``--students`` (facekd checkpoints, fed at their own side).
Writes ``benchmarks/results/evaluation/report.md`` / ``report.json`` and
``worst_pairs_<set>.png`` (the legacy model's least similar mated and most similar non-mated
pairs). Exits 0 with a message when ``../shared/data`` is absent.

    .venv/bin/python benchmarks/bench_eval_sets.py [--sets-dir outputs/sets] [--students a.pt,...]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FROZEN = ROOT / "benchmarks" / "sets"
RESULTS = ROOT / "benchmarks" / "results" / "evaluation"
MODELS = {
    "legacy": DATA / "insightface-mobilefacenet-legacy" / "model",
    "mbf": DATA / "espdl-mobilefacenets" / "mbf.onnx",
    "mfn": DATA / "espdl-mobilefacenets" / "mfn.onnx",
}
SETS = ("dev", "lfw_mini", "cfp_ff", "cfp_fp")
FARS = (1e-3, 1e-4)


def build_sets(sets_dir: Path) -> dict:
    """Build every missing set into ``sets_dir``; ``{set: drift lines}`` against the frozen."""
    from facekd.data.detect import FaceDetector
    from facekd.data.packing import build_bin
    from facekd.data.pairlists import read_cfp_pairs, read_lfw_pairs
    from facekd.data.set_manifest import compare_manifests, manifest_path, read_manifest

    sys.path.insert(0, str(ROOT / "data_prep"))
    from dev_split import make_split

    sources = {
        "dev": lambda: make_split(DATA / "celeba-tight-1756", DATA / "celeba-299").pairset(),
        "lfw_mini": lambda: read_lfw_pairs(
            DATA / "lfw-mini" / "pairs.txt", DATA / "lfw-mini" / "images"
        ),
        "cfp_ff": lambda: read_cfp_pairs(DATA / "cfp-mini", "FF"),
        "cfp_fp": lambda: read_cfp_pairs(DATA / "cfp-mini", "FP"),
    }
    roots = {"dev": DATA, "lfw_mini": DATA / "lfw-mini" / "images", "cfp_ff": DATA / "cfp-mini"}
    roots["cfp_fp"] = roots["cfp_ff"]
    fraction = {"lfw_mini": 0.52}  # the others are tight crops: the whole photo
    detector, drift = None, {}
    for name in SETS:
        out = sets_dir / f"{name}.bin"
        frozen = FROZEN / f"{name}.manifest.json"
        if out.exists():  # built earlier: compare its manifest with the frozen one
            if frozen.exists():
                new = read_manifest(manifest_path(out))
                drift[name] = compare_manifests(read_manifest(frozen), new)
            continue
        detector = detector or FaceDetector(policy="center")
        ps = sources[name]()
        ps.name = name
        report = build_bin(
            ps,
            out,
            detector,
            fraction=fraction.get(name, 1.0),
            progress=True,
            frozen=frozen if frozen.exists() else None,
            root=roots[name],
        )
        print(report)
        drift[name] = report.drift if frozen.exists() else None
    return drift


def embed_all(model_path, sets: dict, side: int | None) -> dict:
    """``{set: (M, D)}`` flip-sum embeddings of each set's distinct faces (one pass over all)."""
    from facekd.evaluation.embed import extract_embeddings

    index, unique = {}, []
    for ps in sets.values():
        for img in ps.images:
            if img not in index:  # CFP-FF and CFP-FP share their frontal faces
                index[img] = len(unique)
                unique.append(img)
    emb = extract_embeddings(model_path, unique, degrade_to=side, progress=True)
    return {n: emb[[index[i] for i in ps.images]] for n, ps in sets.items()}


def score(emb: np.ndarray, ps) -> dict:
    """Protocol-fold grid accuracy, pair-ROC TAR@1e-3, all-pairs TAR@FAR of one set."""
    from facekd.evaluation.all_pairs import all_pairs_tar
    from facekd.evaluation.verification import verify

    pairs = (emb[ps.pairs[:, 0]], emb[ps.pairs[:, 1]])
    res = verify(pairs, ps.issame, folds=ps.folds, thresholds="grid")
    allp = all_pairs_tar(emb, ps.identities, FARS)
    return {
        "acc": res.accuracy,
        "std": res.accuracy_std,
        "n_pairs": len(ps),
        **{f"tar_all@{k:g}": v for k, v in allp.tar_at_far.items()},
        "all_pairs": allp.to_dict(),
    }


def contact_sheet(emb: np.ndarray, ps, path: Path, n: int = 8) -> None:
    """The ``n`` least similar mated and ``n`` most similar non-mated pairs, as one PNG."""
    import cv2

    from facekd.data.verification import decode_image

    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = np.sum(e[ps.pairs[:, 0]] * e[ps.pairs[:, 1]], axis=1)
    mated = np.flatnonzero(ps.issame)[np.argsort(cos[ps.issame])[:n]]
    other = np.flatnonzero(~ps.issame)[np.argsort(-cos[~ps.issame])[:n]]
    rows = []
    for picks, label in ((mated, "same person, lowest cosine"), (other, "different, highest")):
        tiles = []
        for k in picks:
            a, b = (decode_image(ps.images[i]) for i in ps.pairs[k])
            tile = np.concatenate([a, b], axis=1).copy()
            cv2.putText(tile, f"{cos[k]:.2f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (255, 255, 0), 1, cv2.LINE_AA)  # fmt: skip
            tiles.append(np.pad(tile, ((2, 2), (2, 2), (0, 0))))
        band = np.concatenate(tiles, axis=1)
        head = np.zeros((18, band.shape[1], 3), np.uint8)
        cv2.putText(head, f"{ps.name}: {label}", (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
        rows += [head, band]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


def markdown(res: dict) -> str:
    cols = [f"{s} acc" for s in SETS] + [f"{s} TAR@{f:g}" for s in SETS for f in FARS]
    lines = [
        "# The evaluation sets, rebuilt and frozen, and the real models on them",
        "",
        f"Command: `{res['command']}`",
        "",
        "Accuracy: the protocol's own folds (dev 10, LFW-mini 2, CFP-mini 2), insightface grid "
        "threshold, flip-sum embeddings. TAR@FAR: all pairs of the set's distinct faces "
        "(`facekd.evaluation.all_pairs`, threshold admitting at most FAR x impostors).",
        "The dev split is for choices; LFW / CFP numbers are scored once per final row.",
        "",
        "| model | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for name, row in res["models"].items():
        mark = "" if name in MODELS else " †"  # students trained before the dev split existed
        cells = [f"{100 * row[s]['acc']:.2f}" + (mark if s == "dev" else "") for s in SETS]
        cells += [f"{100 * row[s][f'tar_all@{f:g}']:.2f}" for s in SETS for f in FARS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any(name not in MODELS for name in res["models"]):
        lines += [
            "",
            "† a student trained before the dev split existed (on every CelebA photo): it saw "
            "the dev identities, so its dev numbers are not held out. Its LFW / CFP numbers "
            "are re-scored on the rebuilt sets; nothing was retrained.",
        ]
    head = "| set | pairs | faces | identities | mated / non-mated (all pairs) | context-padded "
    lines += ["", "## Sets", "", head + "| no face | pixels sha256 | frozen |", "|---" * 9 + "|"]
    for s in SETS:
        m = res["sets"][s]
        drift = res["drift"].get(s)
        frozen = "new" if drift is None else ("identical" if not drift else "; ".join(drift))
        a = next(iter(res["models"].values()))[s]["all_pairs"]
        lines.append(
            f"| {s} | {m['n_pairs']} | {m['n_images']} | {m['n_identities']} | "
            f"{a['n_mated']:,} / {a['n_impostor']:,} | {len(m.get('context', []))} | "
            f"{len(m['no_face'])} | `{m['pixels_sha256'][:16]}` | {frozen} |"
        )
    lines += ["", "Worst pairs of the legacy model: " + ", ".join(
        f"[{p}]({p})" for p in res["sheets"])]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets-dir", default=str(ROOT / "outputs" / "sets"))
    p.add_argument("--students", default="", help="comma-separated facekd checkpoints")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if not (DATA / "cfp-mini").exists() or not (DATA / "lfw-mini").exists():
        print(f"SKIP: real data not available under {DATA}; nothing to evaluate.")
        return 0
    from facekd.data.set_manifest import load_set, manifest_path, read_manifest
    from facekd.models.checkpoints import load_backbone

    sets_dir, out = Path(args.sets_dir), Path(args.out_dir)
    sets_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    drift = build_sets(sets_dir)
    sets = {s: load_set(sets_dir / f"{s}.bin", s) for s in SETS}
    manifests = {s: read_manifest(manifest_path(sets_dir / f"{s}.bin")) for s in SETS}
    models = {k: (str(v), None) for k, v in MODELS.items()}
    for path in filter(None, args.students.split(",")):
        net = load_backbone(path)
        models[Path(path).stem] = (net, net.input_size if net.input_size < 112 else None)
    res = {"command": shlex.join(["python", *sys.argv]), "models": {}, "sheets": []}
    for name, (model, side) in models.items():
        if name == "legacy":
            model = load_backbone(model)
        emb = embed_all(model, sets, side)
        res["models"][name] = {s: score(emb[s], sets[s]) for s in SETS}
        print(name, {s: round(100 * r["acc"], 2) for s, r in res["models"][name].items()})
        if name == "legacy":
            for s in ("cfp_ff", "cfp_fp", "dev"):
                contact_sheet(emb[s], sets[s], out / f"worst_pairs_{s}.png")
                res["sheets"].append(f"worst_pairs_{s}.png")
    keep = ("n_pairs", "n_images", "n_identities", "pixels_sha256", "pairs_sha256", "bin_sha256",
            "no_face", "context", "built_with")  # fmt: skip
    res["sets"] = {s: {k: m.get(k, []) for k in keep} for s, m in manifests.items()}
    res["drift"] = drift
    (out / "report.json").write_text(json.dumps(res, indent=1, default=float))
    (out / "report.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
