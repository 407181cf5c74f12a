"""LFW-mini for the benchmark scripts: the packed ``.bin`` checked against ``pairs.txt``.

``load_lfw_mini(bin_path, lfw_dir, build=...)`` returns the ``PairSet`` of the ``.bin``
(built from the raw photos with facekd's MTCNN + ArcFace alignment when ``build`` and absent)
and the fold-major pair list it must match; a missing or mismatching file raises ``ValueError``
with what to do, so every script reports it the same way.
"""

from __future__ import annotations

from pathlib import Path


def load_lfw_mini(bin_path: Path, lfw_dir: Path, build: bool = False):
    """``(PairSet, raw pair list)`` of LFW-mini; see the module docstring."""
    from facekd.data.pairlists import read_lfw_pairs
    from facekd.data.verification import read_bin

    raw = read_lfw_pairs(lfw_dir / "pairs.txt", lfw_dir / "images").fold_major()
    bin_path = Path(bin_path)
    if not bin_path.exists():
        if not build:
            raise ValueError(f"{bin_path} missing; bench_lfw_legacy.py builds it")
        from facekd.data.detect import FaceDetector
        from facekd.data.packing import build_bin

        print(build_bin(raw, bin_path, FaceDetector(policy="center")))
    ps = read_bin(bin_path, "lfw_mini")
    if len(ps) != len(raw) or (ps.issame != raw.issame).any():
        raise ValueError(f"{bin_path} does not match pairs.txt; delete it")
    return ps, raw
