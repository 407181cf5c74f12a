"""Pixel conventions of every facekd model: the one place they are defined.

* Colour order RGB (OpenCV reads BGR: convert at the file boundary, never later).
* Normalisation ``x -> (x / 255 - 0.5) / 0.5`` into [-1, 1] (insightface arcface_torch).
* Horizontal flip = reversing the width axis (the flip-sum test adds the flipped embedding).
* Low resolution = ``cv2.INTER_AREA`` resize of the *aligned* crop (Karlekar et al., 2019:
  the student sees the same face at a lower resolution; METHODS.md section 2.5).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

MEAN = 0.5
STD = 0.5


def to_tensor(image: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float32 in [-1, 1]."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got {getattr(image, 'shape', type(image))}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    return (t / 255.0 - MEAN) / STD


def to_image(tensor: Tensor) -> np.ndarray:
    """Inverse of ``to_tensor``: ``(3, H, W)`` in [-1, 1] -> ``(H, W, 3)`` uint8 RGB."""
    x = (tensor.detach().float().cpu() * STD + MEAN) * 255.0
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def flip(images: Tensor) -> Tensor:
    """Horizontal flip of ``(B, 3, H, W)`` or ``(3, H, W)`` images."""
    return images.flip(-1)


def resize(image: np.ndarray, size: int, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """Square resize of an aligned crop (``INTER_AREA`` by default: anti-aliased down-sampling)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return cv2.resize(image, (size, size), interpolation=interpolation)


class ImageDecodeError(ValueError):
    """An undecodable image, or (strict reading) a truncated file; ``source`` names it."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(message)
        self.source = source


def incomplete_reason(buf: bytes) -> str | None:
    """Why encoded JPEG / PNG bytes are cut short, or ``None`` when they look complete.

    OpenCV 4 decodes a truncated JPEG without an error, filling the missing rows with grey
    (OpenCV 5 refuses it); an interrupted copy or a full disk leaves such files behind. Checked
    here so the outcome does not depend on the OpenCV build. A JPEG is complete when an EOI marker
    (FF D9) follows its last start-of-scan (FF DA): inside entropy-coded data FF is always
    stuffed (FF 00) or a restart marker, and an EXIF thumbnail's EOI comes before the main scan.
    A PNG is complete when it ends with its IEND chunk. Other formats are left to the decoder.
    """
    if buf[:3] == b"\xff\xd8\xff":
        sos = buf.rfind(b"\xff\xda")
        if sos < 0:
            return "JPEG without image data (no start-of-scan marker)"
        if buf.rfind(b"\xff\xd9") < sos:
            return "truncated JPEG (no end-of-image marker after the last scan)"
    elif buf[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in buf[-16:]:
        return "truncated PNG (no IEND chunk at the end)"
    return None


def read_rgb(data: bytes | str, strict: bool = False) -> np.ndarray:
    """Decode an image file (path or encoded bytes) to ``(H, W, 3)`` uint8 RGB.

    Grayscale is replicated to three channels and alpha is dropped. Raises
    ``ImageDecodeError`` (a ``ValueError``) naming the source when it cannot be decoded, and
    with ``strict=True`` (training data) also when a JPEG / PNG is truncated
    (``incomplete_reason``), which OpenCV would otherwise return as a half-grey picture.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        source = f"<{len(raw)} encoded bytes>"
    else:
        source = str(data)
        try:
            with open(source, "rb") as f:
                raw = f.read()
        except OSError as err:
            raise ImageDecodeError(source, f"cannot read image {source}: {err.strerror}") from None
    if strict and (reason := incomplete_reason(raw)):
        raise ImageDecodeError(source, f"cannot use image {source}: {reason}")
    buf = np.frombuffer(raw, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None  # honours EXIF orientation
    if img is None:
        raise ImageDecodeError(source, f"cannot decode image {source}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class PhotoError(ValueError):
    """A raw photo facekd cannot use; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_photo(path: str, min_side: int = 24) -> np.ndarray:
    """Decode a raw photo strictly to ``(H, W, 3)`` uint8 RGB, whatever its storage.

    Pillow applies the EXIF orientation, converts grayscale / palette / CMYK / 16-bit and drops
    alpha (composited on black). Unlike OpenCV it refuses truncated files instead of returning
    a half-grey image. Raises ``PhotoError`` with reason ``unreadable``, ``truncated``,
    ``empty`` or ``too_small``.
    """
    import os

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise PhotoError("unreadable", f"{path}: {err.strerror}") from None
    if size == 0:
        raise PhotoError("empty", f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(background, im)
            rgb = np.array(im.convert("RGB"), dtype=np.uint8)  # writable, unlike np.asarray
    except UnidentifiedImageError:
        raise PhotoError("unreadable", f"{path}: not an image Pillow can identify") from None
    except OSError as err:
        reason = "truncated" if "truncated" in str(err).lower() else "unreadable"
        raise PhotoError(reason, f"{path}: {err}") from None
    except (ValueError, SyntaxError) as err:  # Pillow raises these for some corrupt headers
        raise PhotoError("unreadable", f"{path}: {err}") from None
    if min(rgb.shape[:2]) < min_side:
        raise PhotoError("too_small", f"{path}: {rgb.shape[1]}x{rgb.shape[0]} px < {min_side} px")
    return rgb
