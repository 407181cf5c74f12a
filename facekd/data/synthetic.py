"""Synthetic, identity-labelled, aligned-like face images for demos and tests.

THE DATA IS SYNTHETIC. Each "person" is a cartoon face drawn with OpenCV primitives from
parameters derived from ``(seed, identity)``: face-oval size, aspect and jaw taper; eye
spacing, size, height, tilt and iris colour; eyebrow shape and thickness; nose position and
width; mouth width, height and lip thickness; ears; hair style, hairline, parting and colour;
skin tone with a low-frequency per-identity texture; marks (moles, freckles, glasses, beard,
moustache). Each image of a person adds nuisances from ``(seed, identity, image_index)``:
in-plane rotation, scale, translation, a small yaw (horizontal squash plus parallax of the
inner features), expression (smile curvature, mouth opening, eye openness, brow raise),
directional lighting, brightness / contrast / colour cast, background clutter and clothing,
an occluding patch (p=0.2), Gaussian blur and pixel noise.

What it can show: that a pipeline runs end to end (data -> training -> distillation ->
evaluation -> export) and *learns*: identities are separable by a small CNN but not by raw
pixels (measured, seed 0: leave-one-out cosine 1-NN on raw pixels 0.16 over 100 identities x
10 photos at 112 px, chance 0.01; a 6-layer CNN trained 12 epochs on 100 x 20 photos at 56 px
reaches 0.85 accuracy on held-out photos and 0.79 embedding 1-NN on 50 unseen identities,
where raw pixels give 0.23 and 0.22), and alignment code can be checked against the known
landmarks. What it cannot show: anything about accuracy on real faces,
the relative merit of distillation methods on real data, or robustness to real pose,
illumination, age or demographic variation. Never report numbers on it as face-recognition
results.

Faces are placed on the ArcFace 112x112 template (``facekd.data.align``; scaled to ``size``)
before the per-image pose jitter, so they stand in for aligned crops; ``render`` also returns
the five landmarks (left eye, right eye, nose tip, left / right mouth corner, image left
first) of each image. Rendering is deterministic: the same ``(seed, identity, image_index,
size, nuisance)`` gives identical pixels, whatever the order of calls or number of workers.
Held-out identities for evaluation come from ``identity_offset`` (e.g. train on identities
0..999, evaluate on ``identity_offset=100_000``), so they are different people.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

from facekd.data.folder import Transform, make_item
from facekd.data.synthetic_draw import (
    CENTRE,
    Pen,
    draw_scene,
    identity_params,
    identity_texture,
    image_params,
    noise_bank,
)


def render_face(
    seed: int, identity: int, image_index: int, size: int = 112, nuisance: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw image ``image_index`` of person ``identity``.

    Args:
        seed: generator seed (int >= 0); different seeds give different people.
        identity: global identity id (int >= 0).
        image_index: which photo of that person (int >= 0).
        size: output side in pixels (square, like an aligned crop). Default 112.
        nuisance: scale of the per-image pose, lighting, occlusion, blur and noise (0 = none:
            canonical pose, even light). Expression, background, clutter and clothing vary
            whatever its value. Default 1.

    Returns:
        ``(size, size, 3)`` uint8 RGB image and ``(5, 2)`` float64 landmarks in pixels.
    """
    for name, v in (("seed", seed), ("identity", identity), ("image_index", image_index)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16, got {size!r}")
    if not isinstance(nuisance, (int, float)) or not 0 <= nuisance <= 2:
        raise ValueError(f"nuisance must be a number in [0, 2], got {nuisance!r}")
    p = identity_params(int(seed), int(identity))
    q = image_params(int(seed), int(identity), int(image_index), float(nuisance))
    k = size / 112.0

    # background: a colour ramp; the scene (clutter, clothes, head) is drawn over it in uint8
    # (OpenCV anti-aliases strokes only on 8-bit images)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    bg = np.clip(q["bg"] + ramp[:, None, None] * q["bg_grad"], 0, 255)  # (size, 1, 3)
    canvas = np.ascontiguousarray(np.broadcast_to(bg, (size, size, 3)), dtype=np.uint8)
    face_mask = np.zeros((size, size), np.uint8)
    landmarks = draw_scene(Pen(canvas), p, q, face_mask)

    # per-identity skin texture: low-frequency multiplicative noise on the face region
    gain = 1.0 + identity_texture(int(seed), int(identity), size) * face_mask
    canvas = np.clip(canvas * gain[:, :, None] + 0.5, 0, 255).astype(np.uint8)

    # pose: squash (yaw) and scale, rotate about CENTRE, translate -- one affine warp
    a = np.deg2rad(q["angle"])
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    lin = rot @ np.diag([q["scale"] * (1 - 0.25 * abs(q["yaw"])), q["scale"]])
    c = CENTRE * k
    m = np.hstack([lin, (c + q["shift"] * k - lin @ c)[:, None]])  # (2, 3)
    canvas = cv2.warpAffine(
        canvas, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
    )
    landmarks = (landmarks * k) @ m[:, :2].T + m[:, 2]  # (5, 2) pixels

    if q["occluder"] is not None:  # after the warp: the landmarks stay the true positions
        kind, (x, y), (w, h), colour = q["occluder"]
        occ = Pen(canvas)
        if kind == 0:
            occ.poly([(x - w, y - h), (x + w, y - h), (x + w, y + h), (x - w, y + h)], colour)
        else:
            occ.ellipse((x, y), (w, h), colour)

    # light: directional ramp, gain, contrast about mid-grey, colour cast
    canvas = canvas.astype(np.float32)
    xy = (np.arange(size, dtype=np.float32) / (size - 1) - 0.5) * 2
    ramp = np.cos(q["light_dir"]) * xy[None, :] + np.sin(q["light_dir"]) * xy[:, None]
    canvas *= (1.0 + q["light"] * ramp)[:, :, None] * q["gain"]
    canvas = (canvas - 128.0) * q["contrast"] + 128.0
    canvas *= q["cast"]
    if q["blur"] > 0:
        canvas = cv2.GaussianBlur(canvas, (0, 0), q["blur"] * k)
    ox, oy, sign = q["noise_at"]
    ox, oy = ox * size // 112, oy * size // 112
    canvas += noise_bank(size)[oy : oy + size, ox : ox + size] * np.float32(sign * q["noise"])
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), landmarks


class SyntheticFaces(Dataset):
    """A ``Dataset`` of synthetic faces: ``num_identities`` people x ``images_per_identity``.

    Item ``i`` is image ``i % images_per_identity`` of label ``i // images_per_identity``;
    label ``l`` is drawn as global identity ``identity_offset + l``. Items follow
    ``facekd.data.batching`` (``image`` ``(3, size, size)`` in [-1, 1], ``label``, ``index``,
    optionally ``teacher_image`` when ``transform`` returns paired views).

    Args:
        num_identities: number of people (labels ``0..num_identities-1``).
        images_per_identity: photos per person.
        size: image side in pixels. Default 112 (the ArcFace crop).
        seed: generator seed. Default 0.
        identity_offset: first global identity; use disjoint ranges for training and
            held-out evaluation people. Default 0.
        nuisance: scale of the per-image variation (see ``render_face``). Default 1.
        transform: optional ``facekd.data.folder.Transform`` on the uint8 image
            (e.g. ``facekd.data.augment.FaceAugment``).

    Attributes:
        labels: ``(N,)`` int64 labels in item order; ``num_classes``: ``num_identities``.
    """

    def __init__(
        self,
        num_identities: int,
        images_per_identity: int,
        size: int = 112,
        seed: int = 0,
        *,
        identity_offset: int = 0,
        nuisance: float = 1.0,
        transform: Transform | None = None,
    ) -> None:
        checks = {"num_identities": 1, "images_per_identity": 1, "seed": 0, "identity_offset": 0}
        for (name, lo), v in zip(
            checks.items(),
            (num_identities, images_per_identity, seed, identity_offset),
            strict=True,
        ):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        self.num_identities, self.images_per_identity = num_identities, images_per_identity
        self.size, self.seed, self.identity_offset = size, seed, identity_offset
        self.nuisance, self.transform = nuisance, transform
        self.labels = np.repeat(np.arange(num_identities, dtype=np.int64), images_per_identity)

    @property
    def num_classes(self) -> int:
        return self.num_identities

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    def manifest(self) -> dict:
        """The generator's parameters: they determine every pixel (``facekd.data.manifest``)."""
        return {
            "kind": "synthetic",
            "identities": self.num_identities,
            "images_per_identity": self.images_per_identity,
            "size": self.size,
            "seed": self.seed,
            "identity_offset": self.identity_offset,
            "nuisance": float(self.nuisance),
        }

    def render(self, identity: int, image_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``image_index`` of label ``identity``: ``(size, size, 3)`` uint8, ``(5, 2)``."""
        if not 0 <= identity < self.num_identities:
            raise IndexError(f"identity {identity} out of range [0, {self.num_identities})")
        return render_face(
            self.seed, self.identity_offset + identity, image_index, self.size, self.nuisance
        )

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        label, image_index = divmod(index, self.images_per_identity)
        image, _ = self.render(label, image_index)
        return make_item(image, label, index, self.transform)

    def write_folder(self, root: str | Path, progress: bool = True) -> Path:
        """Write ``root/<id:05d>/<image:04d>.png`` and ``root/landmarks.csv``; returns ``root``.

        Folder names are the zero-padded global identity (``identity_offset + label``), so
        ``ImageFolderDataset`` sorts them into the same labels. ``landmarks.csv`` has one row
        per image: ``path,x0,y0,...,x4,y4`` (path relative to ``root``).
        """
        from tqdm import tqdm

        root = Path(root)
        rows = ["path," + ",".join(f"x{i},y{i}" for i in range(5))]
        for index in tqdm(
            range(len(self)), desc=f"synthetic faces -> {root}", disable=not progress
        ):
            label, image_index = divmod(index, self.images_per_identity)
            image, lm = self.render(label, image_index)
            rel = f"{self.identity_offset + label:05d}/{image_index:04d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(root / rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {root / rel}")
            rows.append(rel + "," + ",".join(f"{v:.3f}" for v in lm.ravel()))
        (root / "landmarks.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        return root

    def __repr__(self) -> str:
        return (
            f"SyntheticFaces(num_identities={self.num_identities}, "
            f"images_per_identity={self.images_per_identity}, size={self.size}, seed={self.seed}, "
            f"identity_offset={self.identity_offset}, nuisance={self.nuisance})"
        )


def synthetic_pairset(
    num_pairs: int = 600,
    num_identities: int = 50,
    images_per_identity: int = 6,
    size: int = 112,
    seed: int = 0,
    identity_offset: int = 100_000,
    n_folds: int = 10,
):
    """A verification protocol over *held-out* synthetic people (``identity_offset`` apart from
    training identities): ``num_pairs`` pairs, half matched, in ``n_folds`` folds, each fold
    holding equal numbers of matched and mismatched pairs (as in LFW's view 2).

    Returns a ``facekd.data.verification.PairSet`` whose images are uint8 RGB arrays.
    """
    from facekd.data.verification import PairSet

    if num_pairs % (2 * n_folds) or num_identities < 2 or images_per_identity < 2:
        raise ValueError(
            f"num_pairs must be a multiple of 2 * n_folds ({2 * n_folds}) and there must be "
            f">= 2 identities with >= 2 images; got {num_pairs}, {num_identities}, "
            f"{images_per_identity}"
        )
    faces = SyntheticFaces(
        num_identities, images_per_identity, size, seed, identity_offset=identity_offset
    )
    images = [
        faces.render(i // images_per_identity, i % images_per_identity)[0]
        for i in range(len(faces))
    ]
    rng = np.random.default_rng([seed, identity_offset, num_pairs])
    per_fold = num_pairs // (2 * n_folds)
    pairs, issame, folds = [], [], []
    for fold in range(n_folds):
        for same in (True, False):
            for _ in range(per_fold):
                a = int(rng.integers(num_identities))
                b = a if same else int((a + rng.integers(1, num_identities)) % num_identities)
                i, j = rng.choice(images_per_identity, 2, replace=False)
                pairs.append((a * images_per_identity + i, b * images_per_identity + j))
                issame.append(same)
                folds.append(fold)
    ids = [str(identity_offset + k // images_per_identity) for k in range(len(images))]
    return PairSet(images, np.array(pairs), np.array(issame), np.array(folds), "synthetic", ids)
