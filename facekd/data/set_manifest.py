"""Frozen verification sets: what a built ``.bin`` holds, recorded so that it can be checked.

A ``.bin`` rebuilt on another machine is not the same set: MTCNN's landmarks move with the
CPU's float kernels (AVX2 against AVX-512), the aligned crops with them, and the scores by up to
~0.3 points. So ``build_bin`` writes ``<stem>.manifest.json`` beside every ``.bin``:

* ``pixels_sha256``: sha256 over the aligned crops' pixels (uint8 RGB, before JPEG), in image
  order, and ``image_sha256`` per image: what detection and alignment produced;
* ``bin_sha256``: sha256 of the file's bytes (adds the JPEG codec);
* ``pairs_sha256``: sha256 of the pair list (image indices, same/different, folds);
* ``images`` (paths relative to the set's root), ``identities``, ``pairs``, ``issame``,
  ``folds``: the distinct images and the protocol over them, so a ``.bin`` (which repeats an
  image in every pair it is in) can be read back as its ``M`` distinct faces with their
  identities (``load_set``): the all-pairs protocol needs them;
* ``no_face``: images cut by the centre-crop fallback; ``built_with``: library versions, threads.

``compare_manifests(frozen, new)`` names what changed (pair list, which images' pixels); reports
quote ``pixels_sha256`` so every number names the exact faces it was computed on. The frozen
manifests of the sets facekd reports on are committed under ``benchmarks/sets/``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

FORMAT = "facekd-verification-set/1"


def manifest_path(bin_path: str | os.PathLike) -> Path:
    """``x/cfp_fp.bin`` -> ``x/cfp_fp.manifest.json``."""
    p = Path(bin_path)
    return p.with_name(p.stem + ".manifest.json")


def pixels_digest(crop: np.ndarray) -> str:
    """sha256 of an aligned crop's shape and uint8 pixels."""
    crop = np.ascontiguousarray(crop, dtype=np.uint8)
    h = hashlib.sha256(str(crop.shape).encode())
    h.update(crop.tobytes())
    return h.hexdigest()


def pairs_digest(pairs: np.ndarray, issame: np.ndarray, folds: np.ndarray) -> str:
    """sha256 of the pair list: int64 indices, bool labels, int64 folds."""
    h = hashlib.sha256()
    for arr, dtype in ((pairs, np.int64), (issame, bool), (folds, np.int64)):
        h.update(np.ascontiguousarray(arr, dtype=dtype).tobytes())
    return h.hexdigest()


def _build_facts(threads: int | None) -> dict:
    import platform

    import cv2
    import torch

    return {
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }


def set_manifest(
    pairset,
    image_digests: list[str],
    bin_path,
    no_face: list[str],
    root=None,
    context=(),
    threads: int | None = None,
):
    """The manifest of a ``.bin`` written from ``pairset`` (fold-major, raw image paths).

    ``root``: image paths are stored relative to it (default: their common folder), so the
    manifest does not depend on where the data lives."""
    paths = [str(p) for p in pairset.images]
    root = Path(root) if root is not None else Path(os.path.commonpath(paths) if paths else ".")

    def rel(p: str) -> str:
        return Path(p).relative_to(root).as_posix() if Path(p).is_relative_to(root) else p

    whole = hashlib.sha256("\n".join(image_digests).encode()).hexdigest()
    return {
        "format": FORMAT,
        "name": pairset.name,
        "bin": Path(bin_path).name,
        "bin_sha256": hashlib.sha256(Path(bin_path).read_bytes()).hexdigest(),
        "pixels_sha256": whole,
        "pairs_sha256": pairs_digest(pairset.pairs, pairset.issame, pairset.folds),
        "n_pairs": len(pairset),
        "n_images": len(paths),
        "n_identities": len(set(pairset.identities)) if pairset.identities else None,
        "no_face": sorted(rel(p) for p in no_face),
        "context": sorted(rel(p) for p in context),
        "built_with": _build_facts(threads),
        "images": [rel(p) for p in paths],
        "identities": pairset.identities,
        "image_sha256": image_digests,
        "pairs": pairset.pairs.tolist(),
        "issame": [bool(x) for x in pairset.issame],
        "folds": [int(x) for x in pairset.folds],
    }


def write_manifest(manifest: dict, path: str | os.PathLike) -> None:
    """Write atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=0))
    os.replace(tmp, path)


def read_manifest(path: str | os.PathLike) -> dict:
    """Load a manifest, refusing a file of another format."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a facekd set manifest (format {data.get('format')!r})")
    return data


def compare_manifests(frozen: dict, new: dict) -> list[str]:
    """What differs between a frozen set and a rebuild (empty when they are the same faces)."""
    out = []
    if frozen["pairs_sha256"] != new["pairs_sha256"]:
        out.append(f"pair list differs ({frozen['n_pairs']} -> {new['n_pairs']} pairs)")
    if frozen["images"] != new["images"]:
        out.append("image list differs")
    elif frozen["pixels_sha256"] != new["pixels_sha256"]:
        changed = [
            name
            for name, a, b in zip(
                frozen["images"], frozen["image_sha256"], new["image_sha256"], strict=True
            )
            if a != b
        ]
        shown = ", ".join(changed[:3]) + (
            f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
        )
        out.append(f"{len(changed)} of {len(changed and frozen['images'])} crops differ: {shown}")
    return out


def load_set(bin_path: str | os.PathLike, name: str | None = None):
    """A ``.bin`` as ``PairSet`` of its **distinct** faces with identities, from its manifest.

    ``images`` are the encoded crops (each once), ``pairs`` index them in file order, ``folds``
    and ``identities`` come from the manifest; the manifest is checked against the file
    (sha256 and pair labels). Without a manifest beside it, the plain ``read_bin`` view
    (``2 N`` images, no identities) is returned."""
    from facekd.data.verification import PairSet, parse_bin

    data = Path(bin_path).read_bytes()  # read once: parsed and hashed
    ps = parse_bin(data, str(bin_path), name)
    mpath = manifest_path(bin_path)
    if not mpath.exists():
        return ps
    man = read_manifest(mpath)
    if hashlib.sha256(data).hexdigest() != man["bin_sha256"]:
        raise ValueError(f"{bin_path} does not match {mpath} (bin_sha256); rebuild one of them")
    pairs = np.asarray(man["pairs"], np.int64).reshape(-1, 2)
    if len(pairs) != len(ps) or (np.asarray(man["issame"]) != ps.issame).any():
        raise ValueError(f"{mpath}: its pairs do not match {bin_path}")
    images: list = [None] * man["n_images"]
    for pos, idx in enumerate(pairs.reshape(-1)):
        if images[idx] is None:
            images[idx] = ps.images[pos]
    label = name if name is not None else man["name"]
    return PairSet(images, pairs, man["issame"], man["folds"], label, man["identities"])
