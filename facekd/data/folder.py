"""Identity-per-folder training sets of aligned faces: ``root/<identity>/<image>``.

The layout of torchvision's ``ImageFolder`` and of most face-recognition training dumps
(CASIA-WebFace, the images extracted from InsightFace ``.rec`` files). Labels are assigned by
sorting the identity folder names (Python string order, as ``ImageFolder`` does), so the
mapping does not depend on the file system's listing order; it can be saved as JSON and passed
back so that training, evaluation and the teacher cache agree on every label.

``exclude`` drops held-out identities (a dev split) before any label is assigned, so they can
never reach training, the teacher cache or a fitted head; ``load_identity_list`` reads such a
list from a text file (``data.exclude_identities`` in a config).

``make_item`` is the one place where a decoded face becomes a data-set item
(``facekd.data.batching``): the RecordIO data set uses it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from facekd.data.transforms import read_rgb, to_tensor

#: file extensions read as images (compared case-insensitively)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

#: a transform takes an ``(H, W, 3)`` uint8 RGB face and returns an image of the same kind or
#: a dict ``{"image": ..., "teacher_image": ...}`` (e.g. paired low/high-resolution views)
Transform = Callable[[np.ndarray], "np.ndarray | dict[str, np.ndarray]"]

_VIEW_KEYS = frozenset({"image", "teacher_image", "flipped"})


def make_item(
    image: np.ndarray, label: int, index: int, transform: Transform | None = None
) -> dict:
    """The item dict of ``facekd.data.batching`` from a decoded ``(H, W, 3)`` uint8 RGB face.

    ``transform`` (optional) runs on the uint8 image; each view it returns is normalised by
    ``to_tensor`` here, so no transform ever re-implements the pixel convention. A transform
    with a ``views(image) -> dict`` method (``FaceAugment``) is asked for that instead, so the
    item also records whether the face was mirrored (``flipped``: the teacher cache holds both
    the plain and the mirrored teacher view).
    """
    if transform is None:
        out = image
    elif callable(getattr(transform, "views", None)):
        out = transform.views(image)
    else:
        out = transform(image)
    if isinstance(out, Mapping):
        unknown = set(out) - _VIEW_KEYS
        if "image" not in out or unknown:
            raise ValueError(
                "a transform returning a dict must have the key 'image' and optionally "
                f"'teacher_image' and 'flipped'; got keys {sorted(out)}"
            )
        item = {"image": to_tensor(out["image"])}
        if out.get("teacher_image") is not None:
            item["teacher_image"] = to_tensor(out["teacher_image"])
    else:
        item = {"image": to_tensor(out)}
    if isinstance(out, Mapping) and "flipped" in out:  # lets a teacher cache pick the view
        item["flipped"] = bool(out["flipped"])
    item["label"] = int(label)
    item["index"] = int(index)
    return item


def is_image_file(path: Path) -> bool:
    """True for a visible file with one of ``IMAGE_EXTENSIONS`` (any case)."""
    # dotfiles are skipped: macOS "._x.jpg" resource forks carry image extensions but no image
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def save_class_map(class_to_label: Mapping[str, int], path: str | Path) -> None:
    """Write ``{identity folder name: label}`` as JSON (sorted keys, so diffs stay readable)."""
    data = {str(k): int(v) for k, v in class_to_label.items()}
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def load_class_map(path: str | Path) -> dict[str, int]:
    """Read a JSON class map written by ``save_class_map``; labels must be unique ints >= 0."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a class map must be a JSON object {{name: label}}")
    return _checked_map(data, str(path))


def load_identity_list(path: str | Path) -> list[str]:
    """Identity names from a UTF-8 text file, one per line (surrounding whitespace stripped);
    blank lines and lines starting with ``#`` are skipped, a byte-order mark is tolerated."""
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def exclusion_list(spec: list | str | None, source: str) -> list[str]:
    """``data.exclude_identities`` as names: a list as given, a string read as a list file.

    A missing file is a ``ValueError`` naming it (training without the exclusion would leak
    dev identities silently). For a ``folder`` source, numbers in a list are refused: YAML
    reads an unquoted ``0001`` as the int 1, which would never match the folder name.
    """
    key = "data.exclude_identities"
    if spec is None:
        return []
    if isinstance(spec, (str, Path)):
        if not Path(spec).is_file():
            raise ValueError(f"{key}: identity list file not found: {spec}")
        return load_identity_list(spec)
    numbers = [v for v in spec if not isinstance(v, str)]
    if numbers and source == "folder":
        raise ValueError(
            f"{key}: {numbers[:3]} are numbers; quote identity folder names in YAML "
            "(an unquoted 0001 reads as 1)"
        )
    return [str(v) for v in spec]


def _checked_map(mapping: Mapping, source: str) -> dict[str, int]:
    out = {}
    for name, label in mapping.items():
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
            raise ValueError(f"{source}: label of {name!r} must be an int >= 0, got {label!r}")
        out[str(name)] = int(label)
    if len(set(out.values())) != len(out):
        raise ValueError(f"{source}: two identities share a label")
    return out


class ImageFolderDataset(Dataset):
    """Aligned faces stored as ``root/<identity>/<image>``, one folder per identity.

    Args:
        root: the folder holding one sub-folder per identity. Only image files directly in an
            identity folder are read; other files and hidden entries are skipped.
        transform: optional callable on the ``(H, W, 3)`` uint8 RGB face (see ``Transform``).
        class_to_label: ``{folder name: label}`` (or the path of a JSON file from
            ``save_class_map``) to reuse the labels of another run. Default: folder names
            sorted, labelled ``0..C-1``. A folder missing from a given map is an error.
        exclude: identity folder names to leave out entirely (held-out identities). They are
            dropped before labels are assigned, so the default labels are the *kept* names
            sorted, ``0..K-1``; a given class map keeps its labels (an excluded identity in it
            just has no images). Names not under ``root`` are ignored.

    Attributes:
        classes: identity folder names found under ``root`` and kept, sorted.
        excluded_identities: the folder names actually excluded, sorted (``num_excluded``).
        class_to_label: the mapping in use.
        samples: ``[(path, label), ...]``, sorted by identity then file name.
        labels: ``(N,)`` int64 labels in item order (for ``PKBatchSampler``).
        num_classes: ``max(label) + 1`` over the mapping (the classifier size).

    Items follow ``facekd.data.batching``: ``image`` ``(3, H, W)`` in [-1, 1], ``label``,
    ``index`` and, when the transform returns one, ``teacher_image``.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Transform | None = None,
        *,
        class_to_label: Mapping[str, int] | str | Path | None = None,
        exclude: Iterable[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        if not self.root.is_dir():
            raise FileNotFoundError(f"image-folder root not found (or not a folder): {self.root}")
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and p.name[0] != ".")
        if not folders:
            raise ValueError(
                f"no identity folders in {self.root}: expected root/<identity>/<image> "
                f"with images {', '.join(IMAGE_EXTENSIONS)}"
            )
        if isinstance(exclude, (str, Path)):  # iterating a path would exclude its letters
            raise TypeError("exclude takes identity names; read a file with load_identity_list")
        excluded = frozenset(str(name) for name in exclude or ())
        self.excluded_identities = [p.name for p in folders if p.name in excluded]
        if len(self.excluded_identities) == len(folders):
            raise ValueError(
                f"all {len(folders)} identity folders of {self.root} are excluded (exclude / "
                "data.exclude_identities): nothing is left to train on"
            )
        folders = [p for p in folders if p.name not in excluded]
        self.classes = [p.name for p in folders]
        if class_to_label is None:
            self.class_to_label = {name: i for i, name in enumerate(self.classes)}
        elif isinstance(class_to_label, (str, Path)):
            self.class_to_label = load_class_map(class_to_label)
        else:
            self.class_to_label = _checked_map(class_to_label, "class_to_label")
        missing = [name for name in self.classes if name not in self.class_to_label]
        if missing:
            raise ValueError(
                f"{len(missing)} identity folder(s) of {self.root} are not in the class map "
                f"(first: {missing[:5]}); the labels would not match the other run"
            )

        self.samples: list[tuple[Path, int]] = []
        for folder in folders:
            images = sorted(p for p in folder.iterdir() if is_image_file(p))
            if not images:
                seen = sorted(p.name for p in folder.iterdir())[:5]
                raise ValueError(
                    f"identity folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}, "
                    f"any case); first entries: {seen}"
                )
            label = self.class_to_label[folder.name]
            self.samples.extend((p, label) for p in images)
        self.labels = np.fromiter((s[1] for s in self.samples), np.int64, len(self.samples))

    @property
    def num_classes(self) -> int:
        return max(self.class_to_label.values()) + 1

    @property
    def num_excluded(self) -> int:
        """How many identity folders under ``root`` were excluded."""
        return len(self.excluded_identities)

    def save_classes(self, path: str | Path) -> None:
        """Write the class map as JSON (pass it back as ``class_to_label`` in other runs)."""
        save_class_map(self.class_to_label, path)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        # the item's index is its position (the teacher-cache key), also for a negative index
        image = read_rgb(path, strict=True)  # a truncated file is an error, never grey pixels
        return make_item(image, label, index % len(self.samples), self.transform)

    def manifest(self) -> dict:
        """What the teacher cache keys this data set on (``facekd.data.manifest``): the root
        (resolved) and, per image, its path relative to the root, size and mtime in ns, so a
        re-aligned folder with the same layout is told apart from the one a cache was built on.
        Excluded identities are listed too (only when there are some, so the manifests and
        caches of runs without exclusions are unchanged)."""
        files = []
        for path, label in self.samples:
            st = path.stat()
            relative = path.relative_to(self.root).as_posix()
            files.append([relative, st.st_size, st.st_mtime_ns, label])
        out = {"kind": "folder", "path": str(self.root.resolve()), "files": files}
        if self.excluded_identities:
            out["excluded_identities"] = list(self.excluded_identities)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, "
            f"identities={len(self.classes)}, excluded={self.num_excluded})"
        )
