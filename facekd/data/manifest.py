"""What a data set *is*, for keying caches: a JSON-able manifest, its hash, and a readable diff.

A teacher cache (``facekd.teachers.cache``) and a neuron selection are only valid for the exact
images they were computed on. Length and labels are not enough: re-aligning a folder with a
better detector keeps both and changes every pixel. So each facekd data set describes itself
with ``manifest()``:

* ``ImageFolderDataset``: the resolved root, and per image ``[relative path, size, mtime_ns,
  label]`` (a file rewritten in place changes its mtime);
* ``RecordIODataset``: the resolved ``.rec`` path, its size and mtime, sha256 of the ``.idx``
  and of every record header (no image is decoded);
* ``SyntheticFaces``: its generator parameters.

Other data sets fall back to their type, length and labels. ``manifest_diff`` names what
changed between two manifests (the path, files added / removed / rewritten, with examples), so
a refusal tells the user *why* a cache is stale.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np


def dataset_manifest(dataset) -> dict:
    """``dataset.manifest()`` when it has one, else type + length + labels (module docstring)."""
    if callable(getattr(dataset, "manifest", None)):
        return dataset.manifest()
    labels = np.asarray(getattr(dataset, "labels", []), dtype=np.int64)
    return {
        "kind": type(dataset).__name__,
        "count": len(dataset),
        "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
    }


def manifest_fingerprint(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _examples(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def manifest_diff(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two manifests (empty when they are equal)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if key == "files":
            continue
        if old.get(key) != new.get(key):
            a, b = old.get(key), new.get(key)
            if isinstance(a, str) and len(a) == 64 and isinstance(b, str):  # hashes: shorten
                a, b = a[:12], b[:12]
            changes.append(f"{key}: {a!r} -> {b!r}")
    if "files" in old or "files" in new:
        before = {f[0]: f[1:] for f in old.get("files", [])}
        after = {f[0]: f[1:] for f in new.get("files", [])}
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        both = sorted(set(before) & set(after))
        rewritten = [n for n in both if before[n][:2] != after[n][:2]]
        relabelled = [n for n in both if before[n][2:] != after[n][2:]]
        for what, names in (
            ("added", added),
            ("removed", removed),
            ("rewritten (size or mtime)", rewritten),
            ("relabelled", relabelled),
        ):
            if names:
                changes.append(f"{len(names)} file(s) {what}: {_examples(names)}")
    return changes
