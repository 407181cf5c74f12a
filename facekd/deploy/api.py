"""A small Python API: load a face model, embed photos, verify two of them.

    import facekd.deploy.api as fk                      # or facekd.load once exported there
    model = fk.load("student.pt")                # checkpoint, registry name, legacy MXNet, .onnx
    score, same = model.verify("a.jpg", "b.jpg")

``load(path_or_name) -> FaceModel``. ``FaceModel.embed(images)`` takes a list of images (or a
single one) -> ``(N, D)`` float32, L2-normalised, flip-sum embeddings, computed by
``facekd.evaluation.embed.extract_embeddings`` (the one embedding path) on ArcFace-aligned
crops. An image is an ``(H, W, 3)`` uint8 RGB numpy array (``(H, W)`` grayscale and RGBA are
accepted), a ``PIL.Image`` (any mode) or a file path. Alignment:

* ``aligned=True``: every image is already an aligned square crop (resized to the model input);
* ``aligned=False``: every image is a photo: MTCNN finds the face (``policy``, default the one
  nearest the centre), the five landmarks align it to the ArcFace template (``facekd.data``);
* ``aligned=None`` (default): square images of side 112 or the model's input size are taken as
  aligned crops, every other image is detected and aligned.

A photo without a detectable face raises ``NoFaceError`` (a ``ValueError``) naming its index.

``verify(img1, img2) -> (cosine, same)``: ``same = cosine >= threshold``. The default
``DEFAULT_THRESHOLD = 0.3`` is a generic starting point for ArcFace-trained models with
flip-sum, L2-normalised embeddings (the LFW-optimal cosine of such models typically lies around
0.2-0.35); it is NOT calibrated for your model or your data. Calibrate it:
``facekd calibrate --model M --bin pairs.bin --far 1e-3`` (or a labelled folder) stores the
threshold at that false-accept rate in the model's sidecar (``facekd.search.sidecar``), and
``load`` then uses it (``FaceModel.threshold_source`` says which threshold is in force);
``threshold=`` overrides.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from facekd.data.detect import detect_with_context
from facekd.evaluation.embed import extract_embeddings
from facekd.runtime import tune_cpu
from facekd.search.sidecar import DEFAULT_THRESHOLD

ALIGN_SIZE = 112


class NoFaceError(ValueError):
    """MTCNN found no face in a photo passed with ``aligned=False`` (or auto-detected)."""


def to_rgb(image) -> np.ndarray:
    """An image (numpy, PIL or path) -> ``(H, W, 3)`` uint8 RGB."""
    if isinstance(image, (str, os.PathLike)):
        from facekd.data.transforms import read_photo

        return np.array(read_photo(str(image), min_side=8))  # writable copy
    if type(image).__module__.startswith("PIL."):
        return np.array(image.convert("RGB"), dtype=np.uint8)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, PIL image or path, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"numpy images must be uint8 RGB (0..255), got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])


class FaceModel:
    """A face-recognition backbone with its preprocessing (see the module docstring).

    Attributes:
        runner: the torch module or onnxruntime session given to ``extract_embeddings``.
        input_size: the side the model sees; ``threshold``: the cosine of ``verify``.
    """

    def __init__(
        self,
        runner,
        input_size: int | None,
        threshold: float = DEFAULT_THRESHOLD,
        policy: str = "center",
        source: str = "",
        bf16: bool = False,
        threshold_source: str = "given",
    ) -> None:
        self.runner, self.input_size, self.threshold = runner, input_size, float(threshold)
        self.policy, self.source, self._detector = policy, source, None
        self.bf16, self.threshold_source = bool(bf16), threshold_source

    def __repr__(self) -> str:
        return (
            f"FaceModel({self.source!r}, input_size={self.input_size}, threshold={self.threshold})"
        )

    def _is_aligned(self, img: np.ndarray, aligned: bool | None) -> bool:
        if aligned is not None:
            return aligned
        return img.shape[0] == img.shape[1] and img.shape[0] in (ALIGN_SIZE, self.input_size)

    def preprocess(self, images, aligned: bool | None = None) -> list[np.ndarray]:
        """Images -> square uint8 RGB aligned crops (photos: detected and aligned at 112)."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, Sequence) or isinstance(images, str):
            images = [images]
        rgb = [to_rgb(im) for im in images]
        todo = [i for i, im in enumerate(rgb) if not self._is_aligned(im, aligned)]
        if todo:
            if self._detector is None:
                from facekd.data.detect import FaceDetector

                self._detector = FaceDetector(policy=self.policy)
            # a tight photo (face box off the frame) is looked at again with an edge-padded border
            found = detect_with_context(self._detector, [rgb[i] for i in todo])
            for i, dets in zip(todo, found, strict=True):
                if not dets:
                    raise NoFaceError(
                        f"no face found in image {i} ({rgb[i].shape[1]}x"
                        f"{rgb[i].shape[0]} px); pass aligned=True for crops"
                    )
                rgb[i] = dets[0].crop(rgb[i], ALIGN_SIZE)
        for i, im in enumerate(rgb):
            if im.shape[0] != im.shape[1]:
                raise ValueError(f"image {i} is {im.shape[1]}x{im.shape[0]}: not a square crop")
        return rgb

    def embed(
        self,
        images,
        aligned: bool | None = None,
        flip: bool = True,
        batch_size: int = 64,
        bf16: bool | None = None,
    ) -> np.ndarray:
        """Images (one or a list) -> ``(N, D)`` float32 L2-normalised embeddings.

        ``bf16``: bf16 autocast (torch models); default the model's ``bf16`` (from ``load``).
        """
        tune_cpu()
        crops = self.preprocess(images, aligned)
        bf16 = self.bf16 if bf16 is None else bool(bf16)
        return extract_embeddings(
            self.runner, crops, batch_size=batch_size, flip=flip, bf16=bf16, progress=False
        )

    def verify(
        self, image1, image2, threshold: float | None = None, aligned: bool | None = None
    ) -> tuple[float, bool]:
        """``(cosine, cosine >= threshold)`` for two images (default: ``self.threshold``)."""
        e = self.embed([image1, image2], aligned=aligned)
        cosine = float(np.clip(e[0].astype(np.float64) @ e[1].astype(np.float64), -1.0, 1.0))
        return cosine, cosine >= (self.threshold if threshold is None else float(threshold))


def load(
    path_or_name,
    backend: str | None = None,
    threshold: float | None = None,
    policy: str = "center",
    bf16: bool = False,
) -> FaceModel:
    """A ``FaceModel`` from a checkpoint, registry name, legacy MXNet prefix / folder, ``.onnx``
    file (onnxruntime, CPU) or a torch module. ``backend``: ``"torch"``, ``"onnx"`` or None
    (from the suffix). ``threshold``: None = the calibration in the model's sidecar if there is
    one (``facekd calibrate``), else ``DEFAULT_THRESHOLD``. ``policy``: which face of a
    multi-face photo (``facekd.data.detect``).
    ``bf16``: embed under bf16 autocast (torch only; faster on CPUs with native bf16, a small
    accuracy change: README "CPU speed"). A model loaded from a file is turned into an
    inference module (BatchNorm folded, channels-last) where that is faster
    (``extract_embeddings``' default), once, not at every call.
    """
    from facekd.deploy.embed_folder import inference_runner

    tune_cpu()
    runner, size, _ = inference_runner(path_or_name, backend, bf16)
    source = str(path_or_name) if isinstance(path_or_name, (str, os.PathLike)) else "module"
    from facekd.search.sidecar import resolve_threshold

    threshold, why = resolve_threshold(path_or_name, threshold)
    return FaceModel(runner, size, threshold, policy, source, bf16, threshold_source=why)
