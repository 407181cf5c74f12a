"""``facekd enroll``: a gallery of one template per person from a folder of their photos.

Input ``DIR/<person>/<photo>`` (raw photos, detected and aligned as ``facekd embed`` does, or
aligned crops with ``aligned=True``; any depth below the person's folder). Every photo is
embedded by ``facekd.deploy.embed_folder.embed_folder`` into ``<gallery>.images.npz``:
resumable after a kill (atomic shards), a rerun embeds only new photos, failures are listed
with their reason in ``<gallery>.images.failed.json``.

Template of a person (the usual rule for an identity's photos, e.g. insightface's IJB template
pooling without quality weights): the mean of the person's L2-normalised flip-sum embeddings,
L2-normalised again: ``t = normalize(sum_i e_i / n)``.

``gallery.npz`` (written atomically): ``templates (P, D) float32``, ``identities (P,) str``
(the folder names, sorted), ``counts (P,) int64`` (photos per template), ``meta`` (JSON: the
format, the embedding settings of ``embed_folder`` including the model's fingerprint, and
``embedding_size``). ``Gallery.check_model`` refuses to search with another model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facekd.data.align_tree import list_images
from facekd.deploy.embed_folder import _save_npz, embed_folder, fingerprint
from facekd.evaluation.verification import l2_normalize

GALLERY_FORMAT = "facekd.gallery/1"


@dataclass
class Gallery:
    """``templates (P, D)``, ``identities (P,)``, ``counts (P,)`` and the ``meta`` dict."""

    templates: np.ndarray
    identities: np.ndarray
    counts: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.identities)

    def save(self, path: str | os.PathLike) -> None:
        _save_npz(
            Path(path),
            templates=self.templates.astype(np.float32),
            identities=np.asarray(self.identities, dtype=str),
            counts=np.asarray(self.counts, dtype=np.int64),
            meta=np.array(json.dumps(self.meta)),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Gallery:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"gallery {path} does not exist (facekd enroll makes one)")
        with np.load(path, allow_pickle=False) as z:
            missing = {"templates", "identities", "counts", "meta"} - set(z.files)
            if missing:
                raise ValueError(f"{path} is not a facekd gallery (missing {sorted(missing)})")
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != GALLERY_FORMAT:
                raise ValueError(
                    f"{path}: format {meta.get('format')!r}, expected {GALLERY_FORMAT}"
                )
            return cls(z["templates"], z["identities"], z["counts"], meta)

    def check_model(self, model, embedding_size: int | None = None) -> None:
        """Raise ``ValueError`` unless ``model`` is the model the gallery was enrolled with."""
        fp = fingerprint(model)
        if self.meta.get("model_fingerprint") != fp:
            raise ValueError(
                f"the gallery was enrolled with {self.meta.get('model')} (fingerprint "
                f"{str(self.meta.get('model_fingerprint'))[:12]}), not {model} ({fp[:12]}): "
                "embeddings of different models cannot be compared; enrol again with this model"
            )
        if embedding_size is not None and embedding_size != self.meta.get("embedding_size"):
            raise ValueError(
                f"probe embeddings have {embedding_size} dimensions, the gallery "
                f"{self.meta.get('embedding_size')}"
            )


def person_templates(embeddings, paths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(identities, templates, counts)`` from per-image rows; a person = first path part."""
    people = np.array([p.split("/", 1)[0] for p in paths])
    identities, inverse, counts = np.unique(people, return_inverse=True, return_counts=True)
    sums = np.zeros((len(identities), np.asarray(embeddings).shape[1]))
    np.add.at(sums, inverse, l2_normalize(np.asarray(embeddings, dtype=np.float64)))
    return identities, l2_normalize(sums / counts[:, None]).astype(np.float32), counts


@dataclass
class EnrollReport:
    """``people`` enrolled, photos ``embedded`` now / ``reused``, ``failed`` photos {path:
    reason}, ``without_photo``: person folders with no usable photo (not enrolled)."""

    people: int
    embedded: int
    reused: int
    failed: dict[str, str]
    without_photo: list[str]
    out: Path


def enroll(src, model, out, aligned: bool = False, **embed_kwargs) -> EnrollReport:
    """Build ``out`` (gallery .npz) from ``src``; see the module docstring.

    ``embed_kwargs`` go to ``embed_folder`` (``flip``, ``backend``, ``batch_size``, ``workers``,
    ``policy``, ``overwrite``, ``retry_failed``, ``bf16``, ``detector``, ``progress``).
    """
    src, out = Path(src), Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"the gallery must be a .npz file, got {out}")
    names = list_images(src)
    if not names:
        raise ValueError(f"{src} holds no images (jpg, jpeg, png, bmp, webp)")
    loose = [n for n in names if "/" not in n]
    if loose:
        raise ValueError(
            f"{src}: {len(loose)} photos are not in a person's folder (e.g. {loose[0]}); "
            "put each person's photos in DIR/<person>/"
        )
    images = out.with_name(f"{out.stem}.images.npz")
    rep = embed_folder(src, model, images, aligned=aligned, **embed_kwargs)
    with np.load(images, allow_pickle=False) as z:
        emb, paths, meta = z["embeddings"], z["paths"].tolist(), json.loads(str(z["meta"]))
    folders = sorted({n.split("/", 1)[0] for n in names})
    if not paths:
        raise ValueError(
            f"no usable photo in {src}: all {len(names)} failed, see "
            f"{images.with_suffix('.failed.json')}"
        )
    identities, templates, counts = person_templates(emb, paths)
    meta |= {
        "format": GALLERY_FORMAT,
        "embedding_size": int(emb.shape[1]),
        "template": "normalize(mean of L2-normalised embeddings)",
        "images": str(images),
    }
    Gallery(templates, identities, counts, meta).save(out)
    return EnrollReport(
        people=len(identities),
        embedded=rep.embedded,
        reused=rep.reused,
        failed=rep.failed,
        without_photo=sorted(set(folders) - set(identities.tolist())),
        out=out,
    )
