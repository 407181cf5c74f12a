"""Verification and search on a user's own faces: calibrated thresholds, galleries, 1:N search.

* ``calibrate``: the cosine threshold at a target FAR, stored in the model's sidecar
  (``sidecar``), used by ``facekd verify`` / ``facekd search`` / ``facekd.load``;
* ``enroll`` -> ``Gallery``: one template per person, resumable;
* ``search``: top-k identities per probe with open-set rejection, through ``GalleryIndex``
  (exact; numpy for small galleries, faiss for large ones).

1:N metrics (CMC, TPIR@FPIR) live in ``facekd.evaluation.identification``.
"""

from facekd.search.calibrate import calibrate, calibration_record
from facekd.search.gallery import Gallery, enroll
from facekd.search.index import GalleryIndex
from facekd.search.probe import search
from facekd.search.sidecar import read_calibration, resolve_threshold

__all__ = [
    "Gallery",
    "GalleryIndex",
    "calibrate",
    "calibration_record",
    "enroll",
    "read_calibration",
    "resolve_threshold",
    "search",
]
