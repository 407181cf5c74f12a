"""Face detection with MTCNN (Zhang et al., "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks", IEEE SPL 2016) from facenet-pytorch, whose
weights ship inside the wheel (no download).

``FaceDetector.detect`` returns, per image, every face as a ``Detection`` (box, score and five
landmarks in the ArcFace template order: left eye, right eye, nose, left / right mouth corner,
(x, y) pixels of the input image). ``select_faces`` applies a policy when several are found:

* ``"center"`` (default): the face whose box centre is nearest the image centre. Verification
  sets (LFW, CFP, ...) are framed on their subject; measured on all 6,000 LFW pairs with the
  legacy InsightFace MobileFaceNet this gives 99.55% where "largest" gives 96.3% and the
  highest score 95.5% (../shared/METHODS.md, section 6);
* ``"largest"``: the biggest box; ``"score"``: the most confident; ``"all"``: every face.

No face gives an empty list: callers decide (the aligner records it as "no face").

**Tight crops** (CFP, CelebA's "tight" photos, ID-card scans) leave MTCNN no context: its box
runs off the photo (y1 = -17 ... -141 px on CFP) and the landmarks land on the forehead or
bunch mid-face, so the aligned crop shows a shrunken, shifted face; some faces are not found at
all. ``detect_with_context`` decides from the data, per photo: whenever a photo has no face, or
its kept face's box leaves the photo, it looks again at the photo padded by edge replication
(``CONTEXT_LOOKS``: 0.4 x each side; replicate, not mirror: a mirrored border can hold a phantom
face), then, if that finds nothing, inside a black border (0.25 x each side). The answer is
kept, marked ``padded``, in the photo's own pixels. The crop is still cut from the photo with
insightface's black border: measured on CFP-FP folds 01-02 (legacy InsightFace MobileFaceNet,
grid accuracy), cutting with a replicated border instead loses 2.3 points (87.43 vs 89.71): the
smeared edges look like no face the model was trained on; on the dev split it loses 0.6 points
and TAR@1e-4 89.17 -> 86.22 (mbf: a tie, 97.33 vs 97.38, TAR@1e-4 92.04 vs 91.34). Photos
whose faces sit inside the frame (all 1,583 of LFW-mini) are looked at once: crops unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from facekd.data.align import norm_crop, pad_photo

POLICIES = ("center", "largest", "score", "all")
#: the second and third looks at a photo that needs context: (border, fraction of each side).
#: Replicated edges give MTCNN a plausible surround (CelebA-tight: 59 of 60 faces found at
#: 0.4); a black border finds some faces the smeared one hides (CFP-FP-mini: 12 -> 7 misses).
CONTEXT_LOOKS = (("replicate", 0.4), ("constant", 0.25))


@dataclass(frozen=True)
class Detection:
    """One detected face: ``box`` (4,) x1, y1, x2, y2; ``score`` in [0, 1]; ``landmarks`` (5, 2),
    all in pixels of the photo as given. ``padded``: found on a padded photo
    (``detect_with_context``): the photo alone gave no face, or a box off the frame."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    padded: bool = False

    def leaves(self, shape: tuple[int, ...]) -> bool:
        """True when the box runs off a photo of ``shape`` (H, W, ...)."""
        h, w = shape[:2]
        x1, y1, x2, y2 = self.box
        return bool(x1 < 0 or y1 < 0 or x2 > w or y2 > h)

    def crop(self, image: np.ndarray, size: int = 112) -> np.ndarray:
        """The aligned ``size`` x ``size`` crop of ``image`` (``norm_crop``: black border, as
        insightface; see the module docstring)."""
        return norm_crop(image, self.landmarks, size)

    @property
    def size(self) -> float:
        """The shorter side of the box in pixels."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


def select_faces(
    faces: list[Detection], image_shape: tuple[int, ...], policy: str
) -> list[Detection]:
    """Apply a multi-face policy (see module docstring); keeps [] when nothing was found."""
    if policy not in POLICIES:
        raise ValueError(f"unknown face policy {policy!r}; valid: {', '.join(POLICIES)}")
    if not faces or policy == "all":
        return list(faces)
    if policy == "largest":
        key = lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1])  # noqa: E731
    elif policy == "score":
        key = lambda f: -f.score  # noqa: E731
    else:
        centre = np.array([image_shape[1], image_shape[0]], dtype=np.float64) / 2.0
        key = lambda f: float(np.linalg.norm((f.box[:2] + f.box[2:]) / 2.0 - centre))  # noqa: E731
    return [min(faces, key=key)]


class FaceDetector:
    """MTCNN with facekd's policies.

    Args:
        min_face_size: smallest face searched, in pixels (MTCNN default 20).
        thresholds: P-Net / R-Net / O-Net score thresholds (MTCNN default 0.6, 0.7, 0.7).
        min_score: faces below this final score are dropped.
        policy: which faces to keep when several are found (``POLICIES``).
        device: torch device for the three networks.
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        min_score: float = 0.9,
        policy: str = "center",
        device: str | torch.device = "cpu",
    ) -> None:
        from facenet_pytorch import MTCNN  # heavy import, only when detection is used

        if policy not in POLICIES:
            raise ValueError(f"unknown face policy {policy!r}; valid: {', '.join(POLICIES)}")
        self.policy = policy
        self.min_score = min_score
        self.mtcnn = MTCNN(
            min_face_size=min_face_size,
            thresholds=list(thresholds),
            keep_all=True,
            select_largest=False,
            post_process=False,
            device=device,
        ).eval()

    def detect_all(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """Every face of each RGB ``HxWx3`` uint8 image; equal-sized images run as one batch."""
        for img in images:
            if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3):
                raise ValueError(
                    f"detector input must be HxWx3 RGB arrays, got {getattr(img, 'shape', img)}"
                )
        same_size = len({img.shape for img in images}) == 1
        groups = [images] if same_size else [[img] for img in images]
        results: list[list[Detection]] = []
        for group in groups:
            with torch.inference_mode():
                boxes, probs, points = self.mtcnn.detect(np.stack(group), landmarks=True)
            for b, p, pts in zip(boxes, probs, points, strict=True):
                faces = []
                if b is not None:
                    for box, score, lm in zip(b, p, pts, strict=True):
                        if score is not None and score >= self.min_score:
                            faces.append(
                                Detection(
                                    np.asarray(box, np.float64),
                                    float(score),
                                    np.asarray(lm, np.float64),
                                )
                            )
                results.append(faces)
        return results

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """Faces of each image after the policy (one face, or all for ``"all"``; [] if none)."""
        return [
            select_faces(faces, img.shape, self.policy)
            for img, faces in zip(images, self.detect_all(images), strict=True)
        ]


def _needs_context(faces: list[Detection], shape: tuple[int, ...]) -> bool:
    return not faces or any(f.leaves(shape) for f in faces)


def detect_with_context(detector, images: list[np.ndarray], looks=CONTEXT_LOOKS):
    """``detector.detect(images)``, with more looks at every photo that needs context.

    A photo with no face, or whose kept face's box leaves the photo, is detected again after
    ``pad_photo(image, fraction, border)`` for each ``(border, fraction)`` of ``looks`` in turn
    until one finds a face; its boxes and landmarks are shifted back to the photo's own pixels
    and marked ``padded``. When no look finds a face the first answer stands. ``looks=()``
    turns this off. ``detector`` is anything with ``detect(list of RGB arrays) ->
    list[list[Detection]]``.
    """
    faces = detector.detect(images)
    todo = [k for k, img in enumerate(images) if _needs_context(faces[k], img.shape)]
    for border, fraction in looks:
        if not todo:
            break
        padded = [pad_photo(images[k], fraction, border) for k in todo]
        again = detector.detect([img for img, _ in padded])
        missed = []
        for k, (_, (dx, dy)), found in zip(todo, padded, again, strict=True):
            if not found:
                missed.append(k)
                continue
            shift = np.array([dx, dy], np.float64)
            faces[k] = [
                replace(
                    f, box=f.box - np.tile(shift, 2), landmarks=f.landmarks - shift, padded=True
                )
                for f in found
            ]
        todo = missed
    return faces
