"""Face-attribute labels for neuron selection: CelebA names, the IA/NA split, file readers.

Luo, Zhu, Liu, Wang, Tang, "Face Model Compression by Distilling Knowledge from Neurons",
AAAI 2016, score teacher neurons by how well they predict identity-related (IA) and
non-identity (NA) face attributes. The paper's exact split of CelebA's 40 attributes is not
verified; ``DEFAULT_IA`` / ``DEFAULT_NA`` are the facekd split of METHODS.md §1.5 [OURS].

Two file formats are read (``read_attribute_file``):

* CelebA ``list_attr_celeba.txt``: a count line, a header line of the 40 names, then
  ``image_name v1 .. v40`` rows (whitespace-separated) with values -1/1;
* a plain CSV: header ``image,attr1,...``, rows with 0/1 or -1/1 values (one convention per
  file).

Both return names and an ``(N, A)`` uint8 {0, 1} array; with ``keys`` the rows are aligned to
those image keys (exact key first, then its file name, e.g. ``"00012/000001.jpg"`` finds
CelebA's ``000001.jpg``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import PurePosixPath

import numpy as np

#: the 40 CelebA attributes in the column order of ``list_attr_celeba.txt``
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip

#: identity-related attributes (stable for one person) [OURS, METHODS.md §1.5]
DEFAULT_IA: tuple[str, ...] = (
    "Male", "Young", "Big_Nose", "Pointy_Nose", "Big_Lips", "Narrow_Eyes", "Bushy_Eyebrows",
    "Arched_Eyebrows", "High_Cheekbones", "Oval_Face", "Chubby", "Double_Chin", "Bald",
    "Receding_Hairline", "Pale_Skin", "Attractive", "Bags_Under_Eyes",
)  # fmt: skip

#: non-identity attributes (expression, imaging, accessories, styling) [OURS, METHODS.md §1.5]
DEFAULT_NA: tuple[str, ...] = (
    "Smiling", "Mouth_Slightly_Open", "Blurry", "Eyeglasses", "Wearing_Hat", "Wearing_Earrings",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Heavy_Makeup", "Rosy_Cheeks",
    "Bangs", "Straight_Hair", "Wavy_Hair", "Black_Hair", "Blond_Hair", "Brown_Hair",
    "Gray_Hair", "5_o_Clock_Shadow", "Goatee", "Mustache", "No_Beard", "Sideburns",
)  # fmt: skip


def validate_split(
    ia_names: Sequence[str] | None, na_names: Sequence[str] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Check an IA/NA split: CelebA names only, no repeats, disjoint, IA non-empty.

    ``None`` means the default list of that group. Returns the two lists as tuples.
    """
    out = []
    for group, names, default in (("ia", ia_names, DEFAULT_IA), ("na", na_names, DEFAULT_NA)):
        names = default if names is None else names
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{group}_names must be a list of attribute names, got {names!r}")
        unknown = [n for n in names if n not in CELEBA_ATTRIBUTES]
        if unknown:
            raise ValueError(
                f"{group}_names has names that are not CelebA attributes: {unknown}; valid: "
                f"{', '.join(CELEBA_ATTRIBUTES)}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"{group}_names lists an attribute twice: {list(names)}")
        out.append(tuple(names))
    both = sorted(set(out[0]) & set(out[1]))
    if both:
        raise ValueError(f"ia_names and na_names overlap: {both}; a split must be disjoint")
    if not out[0]:
        raise ValueError("ia_names is empty: the IA score needs at least one attribute")
    return out[0], out[1]


def _parse_values(rows: list[list[str]], path: str, plain: bool) -> np.ndarray:
    try:
        values = np.array([[int(v) for v in r] for r in rows], dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"{path}: attribute values must be integers ({err})") from None
    seen = set(np.unique(values).tolist())
    if seen <= {-1, 1} and (not plain or -1 in seen):
        return (values > 0).astype(np.uint8)
    if plain and seen <= {0, 1}:
        return values.astype(np.uint8)
    allowed = "0/1 or -1/1 (one convention per file)" if plain else "-1/1"
    raise ValueError(f"{path}: attribute values must be {allowed}; found {sorted(seen)}")


def _read_celeba(path: str, lines: list[str]) -> tuple[list[str], list[str], np.ndarray]:
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise ValueError(f"{path}: first line must be the image count") from None
    names = lines[1].split()
    rows = [line.split() for line in lines[2:] if line.strip()]
    if len(rows) != count:
        raise ValueError(f"{path}: the count line says {count} images but {len(rows)} follow")
    bad = [i + 3 for i, r in enumerate(rows) if len(r) != len(names) + 1]
    if bad:
        raise ValueError(f"{path}: line {bad[0]} does not have 1 + {len(names)} fields")
    keys = [r[0] for r in rows]
    return names, keys, _parse_values([r[1:] for r in rows], path, plain=False)


def _read_csv(path: str, lines: list[str]) -> tuple[list[str], list[str], np.ndarray]:
    table = [r for r in csv.reader(lines) if r]
    header = [h.strip() for h in table[0]]
    if len(header) < 2:
        raise ValueError(f"{path}: a CSV header needs 'image' and at least one attribute")
    rows = [[v.strip() for v in r] for r in table[1:]]
    bad = [i + 2 for i, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise ValueError(f"{path}: row {bad[0]} does not have {len(header)} fields")
    keys = [r[0] for r in rows]
    return header[1:], keys, _parse_values([r[1:] for r in rows], path, plain=True)


def align_rows(table_keys: Sequence[str], keys: Sequence[str], source: str = "") -> np.ndarray:
    """Row of ``table_keys`` for each of ``keys``: exact match first, then the file name."""
    exact = {k: i for i, k in enumerate(table_keys)}
    if len(exact) != len(table_keys):
        raise ValueError(f"{source}: an image key appears twice in the attribute file")
    rows, missing = [], []
    for key in keys:
        row = exact.get(key, exact.get(PurePosixPath(str(key).replace(os.sep, "/")).name))
        if row is None:
            missing.append(key)
        rows.append(row)
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} of {len(keys)} images have no attribute row "
            f"(first: {missing[:3]})"
        )
    return np.asarray(rows, dtype=np.int64)


def read_attribute_file(
    path: str | os.PathLike, keys: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray, list[str]]:
    """Read CelebA ``list_attr_celeba.txt`` or a plain ``image,attr,...`` CSV.

    Returns ``(names, labels, keys)``: ``labels`` is ``(N, A)`` uint8 in {0, 1}, rows in file
    order or, when ``keys`` is given, aligned to ``keys`` (see ``align_rows``).
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: an attribute file needs a header and at least one row")
    first = lines[0].strip()
    reader = _read_celeba if first.isdigit() else _read_csv
    names, table_keys, labels = reader(path, lines)
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: an attribute name appears twice in the header")
    if keys is None:
        return names, labels, table_keys
    return names, labels[align_rows(table_keys, keys, path)], list(keys)
