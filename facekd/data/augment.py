"""Training augmentation of aligned faces, with paired high/low-resolution views.

``FaceAugment`` is a ``facekd.data.folder.Transform``: it takes an aligned ``(H, W, 3)`` uint8
RGB face and returns a uint8 image, or, when a low-resolution degradation is configured, the
dict ``{"image": student view, "teacher_image": teacher view}`` that the data sets turn into
``Batch.images`` / ``Batch.teacher_images``.

Stages (albumentations 2.x transforms, resize through ``facekd.data.transforms.resize``):

1. *shared* — drawn once and applied to the face before the views split, so teacher and
   student see the same content: horizontal flip (p=0.5, the standard face-recognition
   augmentation, e.g. insightface arcface_torch), optional alignment jitter (a small random
   affine: the landmark error a detector leaves), optional photometric jitter (brightness /
   contrast, hue / saturation / value, gamma) and optional occlusion (coarse dropout, i.e.
   random erasing, Zhong et al., AAAI 2020, arXiv:1708.04896). Any of the three makes the
   teacher's view random, so the teacher runs online on the very image the student sees
   down-sampled: "function matching" (Beyer et al., "Knowledge distillation: A good teacher
   is patient and consistent", CVPR 2022, arXiv:2106.05237).
2. *student only* — low-resolution degradation (Karlekar et al., "Deep face recognition model
   compression via knowledge transfer and distillation", arXiv:1906.00619: the teacher sees
   the high-resolution face, the student the same face down-sampled): optional Gaussian blur
   at the input resolution, down-sampling to ``low_res_size`` (``INTER_AREA`` by default, or a
   random choice among interpolations), optional JPEG compression of the small image,
   optionally resized back to the input size (``upsample_back``) for students that keep the
   full input size.

Randomness. albumentations 2.x ignores the global RNGs (``Compose(seed=...)`` owns a private
stream), and a seeded ``Compose`` copied into DataLoader workers repeats the same stream in
every worker. ``FaceAugment`` therefore re-seeds its pipeline on every call from one integer:
``transform(image, seed=s)`` is a pure function of ``(image, s)``. Without ``seed`` in the call,
the integer comes from the instance's own stream when it was built with ``seed=int`` (a
reproducible sequence of calls in one process), or from Python's global ``random`` when built
with ``seed=None`` (default) -- the RNG that ``facekd.engine.trainer.SeededItems`` seeds from
``(seed, epoch, index)`` for each item, so augmentation is then reproducible across resumes and
independent of the number of workers.

albumentations checks PyPI for a newer version when it is imported (a network call at import);
``FaceAugment`` imports it lazily and sets ``NO_ALBUMENTATIONS_UPDATE=1`` unless the caller set
that variable, so importing this module has no side effect and training never phones out.
"""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from facekd.data.transforms import resize

#: interpolation names accepted by ``interpolation`` (``"random"`` = any of them per call)
INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


def _albumentations():
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


def _probability(name: str, p: float) -> float:
    if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _range(name: str, r: Sequence[float], lo: float, hi: float) -> tuple[float, float]:
    if len(r) != 2 or not lo <= r[0] <= r[1] <= hi:
        raise ValueError(f"{name} must be (low, high) with {lo} <= low <= high <= {hi}, got {r!r}")
    return (r[0], r[1])


def _interpolations(spec: str | int | Sequence[str | int]) -> tuple[int, ...]:
    if spec == "random":
        return tuple(INTERPOLATIONS.values())
    specs = [spec] if isinstance(spec, (str, int)) else list(spec)
    flags = []
    for s in specs:
        if isinstance(s, str) and s in INTERPOLATIONS:
            flags.append(INTERPOLATIONS[s])
        elif isinstance(s, int) and s in INTERPOLATIONS.values():
            flags.append(s)
        else:
            raise ValueError(
                f"unknown interpolation {s!r}; valid: {sorted(INTERPOLATIONS)}, 'random', "
                "a cv2.INTER_* flag among them, or a list of those"
            )
    if not flags:
        raise ValueError("interpolation list is empty")
    return tuple(flags)


class FaceAugment:
    """Augment an aligned face; optionally return paired student (low-res) / teacher views.

    Args:
        flip_p: probability of a horizontal flip (shared by both views). Default 0.5.
        affine_p: probability of the alignment jitter: scale 0.95-1.05, shift +-4 % of the
            side, rotation +-6 degrees, borders filled black as alignment fills them.
            Default 0 (off).
        photometric_p: probability of each photometric jitter (brightness/contrast +-0.2,
            hue +-10 / saturation +-20 / value +-10, gamma 80-120). Default 0 (off).
        occlusion_p: probability of coarse dropout (1-2 holes, each 10-30 % of the side,
            filled black). Default 0 (off).
        low_res_size: side of the student view in pixels (e.g. 56 or 32); ``None`` (default)
            disables the degradation and the transform returns a single uint8 image.
        interpolation: down-sampling filter: a name in ``INTERPOLATIONS`` (default
            ``"area"``, the ``transforms.resize`` default), a ``cv2.INTER_*`` flag, a list of
            those to choose from uniformly per call, or ``"random"`` for all of them.
        blur_p: probability of a Gaussian blur of the student view before down-sampling.
            Default 0.
        blur_sigma: range of the blur's sigma in input pixels. Default (0.5, 1.5).
        jpeg_p: probability of JPEG-compressing the down-sampled student view. Default 0.
        jpeg_quality: range of the JPEG quality. Default (30, 90).
        upsample_back: resize the student view back to the input size (bicubic). Default False.
        paired: with a degradation, return ``{"image": low-res, "teacher_image": high-res}``
            (default True); False returns only the low-resolution image (e.g. low-resolution
            evaluation).
        seed: ``None`` (default) draws each call's seed from Python's global ``random``
            (seeded per item by ``facekd.engine.trainer.SeededItems``, per worker by the
            DataLoader): the setting for training. An int gives the instance a private, reproducible
            stream of call seeds, for single-process use (tests, fixed low-resolution
            evaluation views): DataLoader workers would each copy, and repeat, that stream.
    """

    def __init__(
        self,
        *,
        flip_p: float = 0.5,
        affine_p: float = 0.0,
        photometric_p: float = 0.0,
        occlusion_p: float = 0.0,
        low_res_size: int | None = None,
        interpolation: str | int | Sequence[str | int] = "area",
        blur_p: float = 0.0,
        blur_sigma: Sequence[float] = (0.5, 1.5),
        jpeg_p: float = 0.0,
        jpeg_quality: Sequence[int] = (30, 90),
        upsample_back: bool = False,
        paired: bool = True,
        seed: int | None = None,
    ) -> None:
        if low_res_size is not None and (not isinstance(low_res_size, int) or low_res_size < 4):
            raise ValueError(f"low_res_size must be None or an int >= 4, got {low_res_size!r}")
        self.low_res_size = low_res_size
        self.interpolations = _interpolations(interpolation)
        self.upsample_back = bool(upsample_back)
        self.paired = bool(paired)
        A = _albumentations()
        photo_p = _probability("photometric_p", photometric_p)
        # the flip is drawn here, not by albumentations, so an item can say it was mirrored
        self.flip_p = _probability("flip_p", flip_p)
        self.photometric_p = photo_p
        self.occlusion_p = _probability("occlusion_p", occlusion_p)
        self.affine_p = _probability("affine_p", affine_p)
        shared = []
        if self.affine_p > 0:  # first: jitter the geometry, then the pixels
            shared.append(
                A.Affine(
                    scale=(0.95, 1.05),
                    translate_percent=(-0.04, 0.04),
                    rotate=(-6, 6),
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0,
                    p=self.affine_p,
                )
            )
        if photo_p > 0:
            shared += [
                A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=photo_p),
                A.HueSaturationValue(10, 20, 10, p=photo_p),
                A.RandomGamma(gamma_limit=(80, 120), p=photo_p),
            ]
        if self.occlusion_p > 0:
            shared.append(
                A.CoarseDropout(
                    num_holes_range=(1, 2),
                    hole_height_range=(0.1, 0.3),
                    hole_width_range=(0.1, 0.3),
                    fill=0,
                    p=occlusion_p,
                )
            )
        self._shared = A.Compose(shared)
        sigma = _range("blur_sigma", blur_sigma, 0.0, 20.0)
        quality = _range("jpeg_quality", jpeg_quality, 1, 100)
        self._blur = A.Compose(
            [A.GaussianBlur(blur_limit=0, sigma_limit=sigma, p=_probability("blur_p", blur_p))]
        )
        self._jpeg = A.Compose(
            [
                A.ImageCompression(
                    compression_type="jpeg",
                    quality_range=(int(quality[0]), int(quality[1])),
                    p=_probability("jpeg_p", jpeg_p),
                )
            ]
        )
        if seed is not None and not isinstance(seed, int):
            raise ValueError(f"seed must be None or an int, got {seed!r}")
        self.seed = seed
        self._stream = None if seed is None else random.Random(seed)

    def _call_seed(self) -> int:
        rng = random if self._stream is None else self._stream
        return rng.getrandbits(63)

    @property
    def teacher_view_random(self) -> bool:
        """Whether the teacher's view changes from call to call beyond the mirror image
        (alignment jitter, photometric jitter, occlusion): then no teacher cache can stand in
        for the teacher.
        Blur, JPEG and down-sampling touch only the student view; the flip is cached."""
        return self.affine_p > 0 or self.photometric_p > 0 or self.occlusion_p > 0

    def __call__(self, image: np.ndarray, seed: int | None = None) -> np.ndarray | dict:
        """``(H, W, 3)`` uint8 RGB -> uint8 image, or ``{"image", "teacher_image"}`` (uint8).

        With ``seed`` the output is a pure function of ``(image, seed)``.
        """
        out = self.views(image, seed)
        if "teacher_image" not in out:  # no degradation, or an unpaired student view
            return out["image"]
        return {"image": out["image"], "teacher_image": out["teacher_image"]}

    def views(self, image: np.ndarray, seed: int | None = None) -> dict:
        """Like ``__call__`` but always a dict: ``image``, ``teacher_image`` (paired low
        resolution only) and ``flipped`` (whether the face was mirrored), the form
        ``facekd.data.folder.make_item`` asks for."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 image, got {getattr(image, 'shape', image)}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected uint8 pixels, got {image.dtype}")
        seq = np.random.SeedSequence(self._call_seed() if seed is None else seed)
        rngs = [np.random.default_rng(s) for s in seq.spawn(5)]
        for compose, rng in zip((self._shared, self._blur, self._jpeg), rngs, strict=False):
            compose.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        flipped = bool(rngs[4].random() < self.flip_p)
        if flipped:
            image = np.ascontiguousarray(image[:, ::-1])
        teacher = self._shared(image=image)["image"] if self._shared.transforms else image
        if self.low_res_size is None:
            return {"image": teacher, "flipped": flipped}
        student = self._blur(image=teacher)["image"]
        interp = self.interpolations[int(rngs[3].integers(len(self.interpolations)))]
        student = resize(student, self.low_res_size, interpolation=interp)
        student = self._jpeg(image=student)["image"]
        if self.upsample_back:
            h, w = teacher.shape[:2]
            student = cv2.resize(student, (w, h), interpolation=cv2.INTER_CUBIC)
        student = np.ascontiguousarray(student, dtype=np.uint8)
        if not self.paired:
            return {"image": student, "flipped": flipped}
        teacher = np.ascontiguousarray(teacher)
        return {"image": student, "teacher_image": teacher, "flipped": flipped}

    def __repr__(self) -> str:
        return (
            f"FaceAugment(low_res_size={self.low_res_size}, upsample_back={self.upsample_back}, "
            f"paired={self.paired}, seed={self.seed}, flip_p={self.flip_p}, "
            f"shared={self._shared.transforms})"
        )


#: named configurations for ``build_transform``
PRESETS: dict[str, dict[str, Any]] = {
    "flip": {},
    "photometric": {"photometric_p": 0.5},
    "occlusion": {"occlusion_p": 0.3},
    # function matching (Beyer et al. 2022): every face a new view, the teacher online
    "consistent": {"affine_p": 0.8, "photometric_p": 0.5, "occlusion_p": 0.2},
    "low_res_56": {"low_res_size": 56},
    "low_res_32": {"low_res_size": 32},
    "low_res_mixed": {
        "low_res_size": 32,
        "interpolation": "random",
        "blur_p": 0.5,
        "jpeg_p": 0.5,
    },
}

#: the keyword arguments of ``FaceAugment`` (the keys a transform config may hold)
_KEYS = tuple(inspect.signature(FaceAugment).parameters)


def build_transform(spec: str | Mapping[str, Any] | None) -> FaceAugment | None:
    """A ``FaceAugment`` from a preset name, or from a dict of its keyword arguments.

    ``None`` and ``"none"`` give ``None`` (no augmentation). A dict may name a base preset
    under ``"preset"``; its other keys override the preset. Unknown names or keys raise a
    ``ValueError`` listing the valid ones.
    """
    if spec is None or spec == "none":
        return None
    if isinstance(spec, str):
        spec = {"preset": spec}
    if not isinstance(spec, Mapping):
        raise TypeError(f"transform spec must be a name, a dict or None, got {type(spec).__name__}")
    kwargs = dict(spec)
    preset = kwargs.pop("preset", "flip")
    if preset not in PRESETS:
        raise ValueError(f"unknown transform preset {preset!r}; valid: {sorted(PRESETS)}, 'none'")
    unknown = sorted(set(kwargs) - set(_KEYS))
    if unknown:
        raise ValueError(f"unknown transform keys {unknown}; valid: {['preset', *_KEYS]}")
    return FaceAugment(**{**PRESETS[preset], **kwargs})
