"""Training on a data set that holds a few unusable files, without losing the run.

Large face training sets always hold some: a truncated JPEG from an interrupted copy, a zero
byte file, a corrupt RecordIO record. Training on them as half-grey pictures is silent data
corruption; raising kills the run, and a resumed run meets the same file again and dies again.
``ReplaceUnreadable`` does neither: a data set item whose image cannot be decoded strictly
(``facekd.data.transforms.ImageDecodeError``, or a corrupt RecordIO record) is
reported once, with its path, in the log and in ``report`` (a text file, one line per file;
appended, so DataLoader workers can share it), and replaced by the next readable item
(``i + 1``, ``i + 2``, ... modulo the length). The replacement is deterministic, so resumed and
uninterrupted runs see the same batches, and the replacement item keeps its *own* index and
label, so a teacher cache row is always the one of the image actually used. More than
``max_consecutive`` unreadable items in a row is not a stray file but a broken data set: that
raises, naming the first.
"""

from __future__ import annotations

import logging
import os

from facekd.data.recordio import RecordIOError
from facekd.data.transforms import ImageDecodeError

#: errors that mean "this file is unusable" (anything else is a bug and propagates)
UNREADABLE = (ImageDecodeError, RecordIOError)

log = logging.getLogger(__name__)


class ReplaceUnreadable:
    """Wrap a data set (``__len__`` / ``__getitem__``): unreadable items are reported and
    replaced by the next readable one (module docstring).

    Args:
        dataset: items per ``facekd.data.batching``.
        report: optional path of a text file that collects the unreadable files (appended).
        max_consecutive: how many unreadable items in a row are tolerated. Default 16.
    """

    def __init__(self, dataset, report: str | os.PathLike | None = None, max_consecutive=16):
        self.dataset = dataset
        self.report = None if report is None else os.fspath(report)
        self.max_consecutive = int(max_consecutive)
        self._seen: set[int] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # labels, num_classes, transform ... of the wrapped data set
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _note(self, index: int, err: Exception) -> None:
        if index in self._seen:
            return
        self._seen.add(index)
        log.warning("skipping unreadable training item %d: %s", index, err)
        if self.report is not None:
            with open(self.report, "a", encoding="utf-8") as f:
                f.write(f"{index}\t{err}\n")

    def __getitem__(self, index: int) -> dict:
        n = len(self.dataset)
        first_error = None
        for step in range(min(self.max_consecutive + 1, n)):
            j = (index + step) % n
            try:
                return self.dataset[j]
            except UNREADABLE as err:  # the file, not the code
                self._note(j, err)
                first_error = first_error or err
        raise ValueError(
            f"{min(self.max_consecutive + 1, n)} unreadable items in a row from index {index} "
            f"(first: {first_error}); the data set looks broken, not just one file"
        ) from first_error
