"""Are any CFP or LFW-mini people also in facekd's CelebA training sets? Checked with a model.

CelebA's identities are disjoint from LFW's by construction (CelebFaces+, Sun et al. 2014);
CFP's 500 celebrities were never checked. Names are not available for CelebA, so the check is
biometric: every identity becomes a **template** (the mean of its faces' L2-normalised flip-sum
embeddings, normalised again) under the strongest teacher here (ESP-DL ``mbf.onnx``), and an
evaluation identity *matches* a training identity when their template cosine exceeds the
threshold at template FAR = 1e-4 on the dev split: each dev identity's faces cut into two
halves give two templates, and the threshold admits 1 in 10,000 of the cross-identity pairs.

Faces: up to ``--per-id`` photos of every training identity (dev identities excluded), all
faces of CFP-mini and LFW-mini, each detected and aligned by facekd's set builder
(``packing.align_images``: context padding decided per photo). Crops are cached in
``outputs/overlap_crops.npz``. Writes ``benchmarks/results/evaluation/identity_overlap.md`` /
``.json`` and ``benchmarks/sets/overlap_identities.txt`` (the matched training identities,
excluded from training by default together with the dev identities).

    .venv/bin/python benchmarks/bench_identity_overlap.py [--per-id 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SETS = ROOT / "benchmarks" / "sets"
RESULTS = ROOT / "benchmarks" / "results" / "evaluation"
TEACHER = DATA / "espdl-mobilefacenets" / "mbf.onnx"
FAR = 1e-4


def _photos(per_id: int) -> dict[str, dict[str, list[str]]]:
    """``{group: {identity: photo paths}}`` for the training, dev, CFP and LFW-mini people."""
    sys.path.insert(0, str(ROOT / "data_prep"))
    from dev_split import make_split

    from facekd.data.dev_split import read_identity_tsv

    split = make_split(DATA / "celeba-tight-1756", DATA / "celeba-299")
    dev = set(split.identities())
    train: dict[str, list[str]] = {}
    for src in ("celeba-tight-1756", "celeba-299"):
        for ident, paths in read_identity_tsv(DATA / src).items():
            if ident not in dev:
                train[ident] = sorted(paths)[:per_id]
    cfp: dict[str, list[str]] = {}
    for p in sorted((DATA / "cfp-mini" / "Data" / "Images").glob("*/*/*.jpg")):
        cfp.setdefault(f"cfp/{p.parent.parent.name}", []).append(str(p))
    lfw: dict[str, list[str]] = {}
    for p in sorted((DATA / "lfw-mini" / "images").glob("*/*.jpg")):
        lfw.setdefault(f"lfw/{p.parent.name}", []).append(str(p))
    dev_photos = {i: sorted(split.photos[i]) for i in sorted(dev, key=int)}
    return {"train": train, "dev": dev_photos, "cfp": cfp, "lfw": lfw}


def _crops(paths: list[str], cache: Path) -> np.ndarray:
    """Aligned 112x112 crops of ``paths``; cached per photo path in ``cache`` (only photos not
    yet there are aligned, so an interrupted or extended run redoes nothing)."""
    from tqdm import tqdm

    from facekd.data.detect import FaceDetector
    from facekd.data.packing import align_images

    done: dict[str, np.ndarray] = {}
    if cache.exists():
        with np.load(cache) as z:
            done = dict(zip(z["paths"].tolist(), z["crops"], strict=True))
    todo = [p for p in dict.fromkeys(paths) if p not in done]
    if todo:
        stream = align_images(todo, FaceDetector(policy="center"), fraction=1.0)
        for p, crop, _, _ in tqdm(stream, total=len(todo), desc="align"):
            done[p] = crop
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, paths=np.array(list(done)), crops=np.stack(list(done.values())))
        os.replace(tmp, cache)
    return np.stack([done[p] for p in paths])


def _templates(emb: np.ndarray, owner: list[str]) -> tuple[list[str], np.ndarray]:
    names = sorted(set(owner))
    pos = {n: k for k, n in enumerate(names)}
    t = np.zeros((len(names), emb.shape[1]))
    np.add.at(t, [pos[o] for o in owner], emb)
    return names, t / np.linalg.norm(t, axis=1, keepdims=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-id", type=int, default=5)
    args = p.parse_args(argv)
    if not TEACHER.exists() or not (DATA / "cfp-mini").exists():
        print(f"SKIP: real data not available under {DATA}")
        return 0
    from facekd.evaluation.embed import extract_embeddings

    groups = _photos(args.per_id)
    paths = [p for g in groups.values() for ps in g.values() for p in ps]
    owner = [i for g in groups.values() for i, ps in g.items() for _ in ps]
    group = [n for n, g in groups.items() for ps in g.values() for _ in ps]
    crops = _crops(paths, ROOT / "outputs" / "overlap_crops.npz")
    emb = extract_embeddings(str(TEACHER), list(crops), progress=True)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sel = {n: np.array([g == n for g in group]) for n in groups}
    # dev calibration: two half templates per identity (alternate faces)
    dev_idx = np.flatnonzero(sel["dev"])
    half_owner, rank = [], {}
    for k in dev_idx:
        rank[owner[k]] = rank.get(owner[k], -1) + 1
        half_owner.append(f"{owner[k]}#{rank[owner[k]] % 2}")
    names, t = _templates(emb[dev_idx], half_owner)
    person = np.array([n.split("#")[0] for n in names])
    sims = t @ t.T
    iu = np.triu_indices(len(names), 1)
    other = person[iu[0]] != person[iu[1]]
    imp = np.sort(sims[iu][other])[::-1]
    thr = float(imp[int(np.floor(FAR * len(imp)))])
    mated_tar = float(np.mean(sims[iu][~other] > thr))
    dev_max = float(imp[0])  # the most similar two different dev people ever get

    def owners(g: str) -> list[str]:
        return [o for o, s in zip(owner, sel[g], strict=True) if s]

    train_names, train_t = _templates(emb[sel["train"]], owners("train"))
    matches = []
    for g in ("cfp", "lfw"):
        ev_names, ev_t = _templates(emb[sel[g]], owners(g))
        s = ev_t @ train_t.T
        for i, j in zip(*np.nonzero(s > thr), strict=True):
            matches.append({"eval": ev_names[i], "train": train_names[j], "cosine": float(s[i, j])})
        print(f"{g}: {len(ev_names)} identities, {sum(m['eval'].startswith(g) for m in matches)} "
              f"matches; highest cosine {s.max():.3f}")  # fmt: skip
    matches.sort(key=lambda m: -m["cosine"])
    res = {
        "teacher": TEACHER.name,
        "threshold": thr,
        "far": FAR,
        "dev_half_templates": len(names),
        "dev_impostor_template_pairs": len(imp),
        "dev_mated_tar_at_threshold": mated_tar,
        "dev_impostor_max": dev_max,
        "comparisons": int((len(set(owners("cfp"))) + len(set(owners("lfw")))) * len(train_names)),
        "train_identities": len(train_names),
        "faces_per_train_identity": args.per_id,
        "cfp_identities": len(set(owners("cfp"))),
        "lfw_identities": len(set(owners("lfw"))),
        "matches": matches,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "identity_overlap.json").write_text(json.dumps(res, indent=1))
    excluded = sorted({m["train"] for m in matches}, key=int)
    (SETS / "overlap_identities.txt").write_text(
        "# CelebA training identities matched to a CFP / LFW-mini person "
        "(benchmarks/bench_identity_overlap.py)\n" + "".join(f"{i}\n" for i in excluded)
    )
    lines = [
        "# Identity overlap: CFP-mini and LFW-mini people in the CelebA training sets",
        "",
        f"Teacher `{TEACHER.name}`; templates = mean flip-sum embedding per identity; threshold "
        f"**{thr:.3f}** = template FAR {FAR:g} on the dev split ({len(names)} half-templates, "
        f"{len(imp):,} impostor pairs; mated half-templates accepted there: "
        f"{100 * mated_tar:.1f} %).",
        "",
        f"Compared: {res['cfp_identities']} CFP-mini and {res['lfw_identities']} LFW-mini "
        f"identities against {len(train_names)} training identities (up to {args.per_id} faces "
        "each; dev identities are not training identities).",
        "",
        f"**{len(matches)} matches** ({len(excluded)} training identities, written to "
        "`benchmarks/sets/overlap_identities.txt` and excluded from training by default). "
        f"How to read them: the check makes {res['comparisons']:,} template comparisons, so a "
        f"FAR of {FAR:g} alone would allow about {FAR * res['comparisons']:.0f} chance "
        "matches if dev's calibration carried over; matches near the threshold may be "
        f"look-alikes. {sum(m['cosine'] > dev_max for m in matches)} matches score above the "
        f"most similar pair of different dev people ({dev_max:.3f}): these are very likely "
        f"the same person, though with {res['comparisons'] / len(imp):.0f}x more comparisons "
        "than dev has impostor pairs a few could still be chance look-alikes. Excluding all of "
        "them costs "
        f"{len(excluded)} of {len(train_names)} training identities.",
        "",
        "| evaluation identity | CelebA identity | cosine |",
        "|---|---|---|",
        *(f"| {m['eval']} | {m['train']} | {m['cosine']:.3f} |" for m in matches),
    ]
    (RESULTS / "identity_overlap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
