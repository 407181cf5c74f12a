"""The training log, ``OUT_DIR/log.csv``: one row per logged step, columns grow as needed.

Rows do not all carry the same keys: evaluation metrics (``lfw_acc`` ...) appear only every
``eval_every`` steps, after the header was written from the first training row. A key the
header lacks therefore rewrites the file once with the header extended (earlier rows get empty
cells in the new columns), through a temporary file and an atomic rename, so a kill during
the rewrite leaves the old log intact; every other row is a plain append.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def append_csv_row(path: str | Path, row: dict) -> list[str]:
    """Append ``row`` to the CSV at ``path`` (created with ``row``'s keys as the header);
    returns the header in use. New keys extend the header (see the module docstring)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        fields = list(row)
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerow(row)
        return fields
    with path.open(newline="") as f:
        fields = next(csv.reader(f), [])  # the header only: the common case appends
    missing = [k for k in row if k not in fields]
    if missing:
        fields, rows = _read(path)
        fields = fields + missing
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(rows)
            w.writerow(row)
        os.replace(tmp, path)
        return fields
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields, restval="").writerow(row)
    return fields
