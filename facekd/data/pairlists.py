"""Readers for the published verification pair lists; each returns a ``PairSet`` of paths.

Pairs keep the file's order; ``folds`` carries the protocol's fold of each pair.

* **LFW** view 2 ``pairs.txt`` (Huang et al. 2007): header ``n_folds<TAB>n`` (a single ``n``
  means one fold, as in ``pairsDevTest.txt``), then per fold ``n`` matched lines
  ``name<TAB>i<TAB>j`` and ``n`` mismatched lines ``name1<TAB>i<TAB>name2<TAB>j``; image
  ``<root>/<name>/<name>_<iiii>.jpg``. Fold ``f`` = the ``f``-th block of ``2n`` lines.
* **CPLFW / CALFW** ``pairs_CPLFW.txt`` / ``pairs_CALFW.txt``: lines ``<file> <label>``, two
  consecutive lines per pair, image ``<root>/<file>``; label 0 = different, any other value
  (CPLFW: 1) = same, equal on both lines. An optional first line whose label is not an
  integer is a header (the CPLFW copy in ../shared/data has ``name same_person``). The
  3,000 positives come first, then the 3,000 negatives; fold ``f`` = positives
  ``[300f, 300f+300)`` plus negatives ``[300f, 300f+300)`` (checked on the real CPLFW list:
  those blocks share identities and no identity crosses folds). Other lengths: the same rule
  with ``n_pos / n_folds`` per block when it divides, else ``folds = -1``.
* **CFP** (Sengupta et al., WACV 2016) ``Protocol/Pair_list_{F,P}.txt``: lines ``k path``
  (1-based ``k``, ``path`` relative to ``Protocol/``); ``Protocol/Split/{FF,FP}/<fold>/
  {same,diff}.txt``: lines ``i,j`` (FF: both frontal; FP: ``i`` frontal, ``j`` profile).
  Pairs are listed fold by fold, ``same`` then ``diff`` (350 + 350 per fold).
* **AgeDB-30** (Moschoglou et al., CVPRW 2017): no public pair list; the protocol ships with
  the data set on request (insightface's packer read ``04_FINAL_protocol_30_years.mat``),
  so facekd supports only insightface's ``agedb_30.bin`` (``facekd.data.verification``).

Malformed lines raise ``ValueError("<file>:<line>: ...")``. Every referenced image is checked
for existence at the end; the missing ones are listed together (``FileNotFoundError``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from facekd.data.verification import PairSet

MAX_LISTED = 20


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of the non-blank lines of ``path``."""
    with open(path, encoding="utf-8") as f:
        return [(i, line.split()) for i, line in enumerate(f, 1) if line.strip()]


def _int(token: str, path: Path, lineno: int, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: {what} must be an integer, got {token!r}") from None


class _Images:
    """Unique image paths in first-use order."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.index: dict[str, int] = {}

    def __call__(self, path: str | Path) -> int:
        key = str(path)
        if key not in self.index:
            self.index[key] = len(self.paths)
            self.paths.append(key)
        return self.index[key]


def _with_identities(ps: PairSet, identities: list[str]) -> PairSet:
    """``ps`` with the identities its file layout implies, when they agree with every pair's
    label; otherwise ``ps`` as it is, with a warning (the protocol still builds; only the
    all-pairs TAR@FAR, which needs identities, is then unavailable)."""
    try:
        return PairSet(ps.images, ps.pairs, ps.issame, ps.folds, ps.name, identities)
    except ValueError as err:
        warnings.warn(f"{err}; identities left out of {ps.name!r}", stacklevel=3)
        return ps


def check_images_exist(paths: list[str], source: str | Path) -> None:
    """Raise ``FileNotFoundError`` listing (up to ``MAX_LISTED``) missing files."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = "\n  ".join(missing[:MAX_LISTED])
        more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} images referenced by {source} are missing:\n  "
            f"{shown}{more}"
        )


def read_lfw_pairs(
    pairs_file: str | os.PathLike,
    image_root: str | os.PathLike,
    ext: str = "jpg",
    check_files: bool = True,
) -> PairSet:
    """LFW ``pairs.txt`` (view 2, any number of folds) -> ``PairSet`` named ``"lfw"``."""
    path, root = Path(pairs_file), Path(image_root)
    lines = _lines(path)
    if not lines:
        raise ValueError(f"{path}: empty pair list")
    lineno, head = lines[0]
    if len(head) not in (1, 2):
        raise ValueError(f"{path}:{lineno}: header must be 'n_folds n_pairs' or 'n_pairs'")
    n_folds = _int(head[0], path, lineno, "number of folds") if len(head) == 2 else 1
    per = _int(head[-1], path, lineno, "pairs per fold")
    body = lines[1:]
    if len(body) != 2 * n_folds * per:
        raise ValueError(
            f"{path}: header promises {n_folds} folds x {2 * per} pairs = {2 * n_folds * per}, "
            f"found {len(body)} pair lines"
        )
    images, pairs, issame, folds = _Images(), [], [], []

    def image(name: str, num: str, lineno: int) -> int:
        k = _int(num, path, lineno, "image number")
        if k < 1:
            raise ValueError(f"{path}:{lineno}: image numbers start at 1, got {k}")
        return images(root / name / f"{name}_{k:04d}.{ext}")

    for n, (lineno, fields) in enumerate(body):
        fold, matched = divmod(n, 2 * per)[0], (n % (2 * per)) < per
        if matched and len(fields) == 3:
            pairs.append((image(fields[0], fields[1], lineno), image(*fields[::2], lineno)))
        elif not matched and len(fields) == 4:
            pairs.append((image(*fields[:2], lineno), image(*fields[2:], lineno)))
        else:
            want = "matched 'name i j'" if matched else "mismatched 'name1 i name2 j'"
            raise ValueError(f"{path}:{lineno}: expected a {want} pair, got {len(fields)} fields")
        issame.append(matched)
        folds.append(fold)
    if check_files:
        check_images_exist(images.paths, path)
    # LFW's layout <root>/<Name>/<Name>_<NNNN>.jpg: the folder is the identity
    identities = [Path(p).parent.name for p in images.paths]
    return _with_identities(
        PairSet(images.paths, np.array(pairs), issame, folds, "lfw"), identities
    )


def read_xlfw_pairs(
    pairs_file: str | os.PathLike,
    image_root: str | os.PathLike,
    n_folds: int = 10,
    name: str | None = None,
    check_files: bool = True,
) -> PairSet:
    """CPLFW / CALFW two-line pair list -> ``PairSet`` (see module docstring for folds)."""
    path, root = Path(pairs_file), Path(image_root)
    lines = _lines(path)
    if lines and len(lines[0][1]) == 2:
        try:
            int(lines[0][1][1])
        except ValueError:
            lines = lines[1:]  # header such as "name same_person"
    if len(lines) % 2:
        raise ValueError(f"{path}: {len(lines)} image lines; pairs need an even number")
    images, pairs, issame = _Images(), [], []
    for (ln1, f1), (ln2, f2) in zip(lines[0::2], lines[1::2], strict=True):
        for ln, f in ((ln1, f1), (ln2, f2)):
            if len(f) != 2:
                raise ValueError(f"{path}:{ln}: expected '<image> <label>', got {len(f)} fields")
        a, b = _int(f1[1], path, ln1, "label"), _int(f2[1], path, ln2, "label")
        if (a != 0) != (b != 0):
            raise ValueError(f"{path}:{ln2}: label {b} disagrees with line {ln1} ({a})")
        pairs.append((images(root / f1[0]), images(root / f2[0])))
        issame.append(a != 0)
    issame = np.array(issame, dtype=bool)
    n_pos = int(issame.sum())
    folds = np.full(len(issame), -1)
    block = n_pos // n_folds if n_folds > 0 else 0
    if n_pos and 2 * n_pos == len(issame) and issame[:n_pos].all() and block * n_folds == n_pos:
        folds = (np.arange(len(issame)) % n_pos) // block
    if check_files:
        check_images_exist(images.paths, path)
    label = name if name is not None else path.stem.replace("pairs_", "").lower()
    return PairSet(images.paths, np.array(pairs).reshape(-1, 2), issame, folds, label)


def read_cplfw_pairs(pairs_file, image_root, check_files: bool = True) -> PairSet:
    """``pairs_CPLFW.txt`` (6,000 pairs, 10 folds) -> ``PairSet`` named ``"cplfw"``."""
    return read_xlfw_pairs(pairs_file, image_root, name="cplfw", check_files=check_files)


def read_calfw_pairs(pairs_file, image_root, check_files: bool = True) -> PairSet:
    """``pairs_CALFW.txt`` (same layout as CPLFW) -> ``PairSet`` named ``"calfw"``."""
    return read_xlfw_pairs(pairs_file, image_root, name="calfw", check_files=check_files)


def _cfp_list(path: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    for lineno, fields in _lines(path):
        if len(fields) != 2:
            raise ValueError(f"{path}:{lineno}: expected '<index> <path>', got {fields}")
        k = _int(fields[0], path, lineno, "image index")
        if k in out:
            raise ValueError(f"{path}:{lineno}: image index {k} listed twice")
        out[k] = os.path.normpath(path.parent / fields[1])
    return out


def read_cfp_pairs(
    root: str | os.PathLike, protocol: str = "FP", check_files: bool = True
) -> PairSet:
    """CFP ``FF`` or ``FP`` protocol of the official folder -> ``PairSet`` ``cfp_ff``/``cfp_fp``.

    Reads every fold folder under ``Protocol/Split/<protocol>/`` (numeric order); fold
    ``f`` (0-based) lists its ``same.txt`` pairs, then its ``diff.txt`` pairs.
    """
    protocol = protocol.upper()
    if protocol not in ("FF", "FP"):
        raise ValueError(f"CFP protocol must be 'FF' or 'FP', got {protocol!r}")
    proto = Path(root) / "Protocol"
    frontal = _cfp_list(proto / "Pair_list_F.txt")
    second = frontal if protocol == "FF" else _cfp_list(proto / "Pair_list_P.txt")
    split = proto / "Split" / protocol
    fold_dirs = sorted(
        (d for d in split.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)
    )
    if not fold_dirs:
        raise ValueError(f"{split}: no fold folders")
    images, pairs, issame, folds = _Images(), [], [], []
    for fold, d in enumerate(fold_dirs):
        for fname, same in (("same.txt", True), ("diff.txt", False)):
            for lineno, fields in _lines(d / fname):
                parts = "".join(fields).split(",")
                if len(parts) != 2:
                    raise ValueError(f"{d / fname}:{lineno}: expected 'i,j'")
                i, j = (_int(p, d / fname, lineno, "pair index") for p in parts)
                if i not in frontal or j not in second:
                    raise ValueError(f"{d / fname}:{lineno}: index ({i},{j}) not in pair lists")
                pairs.append((images(frontal[i]), images(second[j])))
                issame.append(same)
                folds.append(fold)
    if check_files:
        check_images_exist(images.paths, split)
    # Data/Images/<id>/{frontal,profile}/NN.jpg: the grandparent folder is the identity
    identities = [Path(p).parent.parent.name for p in images.paths]
    ps = PairSet(images.paths, np.array(pairs), issame, folds, f"cfp_{protocol.lower()}")
    return _with_identities(ps, identities)
