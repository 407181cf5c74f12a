"""Five-point face alignment to the ArcFace template: the one place facekd defines it.

Template (Deng et al., ArcFace, CVPR 2019; insightface ``face_align.arcface_dst``): the five
landmarks (left eye, right eye, nose tip, left mouth corner, right mouth corner; "left" =
image left) in a 112x112 crop. It is the 96x112 SphereFace/CosFace template shifted +8 px in x.
MTCNN (facenet-pytorch) emits landmarks in this very order, so they feed ``norm_crop`` directly.

The warp is the similarity transform (rotation, isotropic scale, translation) that maps the
detected landmarks onto the template in the least-squares sense (Umeyama, "Least-squares
estimation of transformation parameters between two point patterns", TPAMI 1991), applied with
``cv2.warpAffine`` (bilinear, constant black border), as insightface does.
"""

from __future__ import annotations

import cv2
import numpy as np

#: (5, 2) (x, y) landmark positions in the 112x112 ArcFace crop
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template_for(size: int) -> np.ndarray:
    """The ArcFace template for a ``size`` x ``size`` crop.

    Multiples of 128 follow insightface (scale by size/128, then +8*size/128 px in x, i.e. the
    112 face centred in a wider crop); any other size scales the 112 template by size/112
    (112 itself, and the 56 / 32 px crops of low-resolution work).
    """
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"crop size must be an int >= 8, got {size!r}")
    if size % 128 == 0:
        ratio = size / 128.0
        return ARCFACE_TEMPLATE * ratio + np.array([8.0 * ratio, 0.0])
    return ARCFACE_TEMPLATE * (size / 112.0)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform ``M`` (2, 3) with ``dst ~ M @ [src; 1]``.

    With means mu, variance sigma_src^2 = mean ||src - mu_src||^2 and covariance
    Sigma = mean (dst - mu_dst)(src - mu_src)^T = U D V^T:
    R = U S V^T with S = diag(1, det(U) det(V)) (no reflections), c = tr(D S) / sigma_src^2,
    t = mu_dst - c R mu_src.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"umeyama needs two (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks contain NaN or inf")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = (src_c**2).sum(1).mean()
    if var_src < 1e-12:
        raise ValueError("landmarks are degenerate (all points coincide)")
    cov = dst_c.T @ src_c / src.shape[0]  # (2, 2)
    u, d, vt = np.linalg.svd(cov)
    s = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ s @ vt
    scale = np.trace(np.diag(d) @ s) / var_src
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_dst - scale * rot @ mu_src
    return m


def estimate_norm(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """(2, 3) affine matrix taking image landmarks (5, 2) to the template for ``size``."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(
            f"expected five (x, y) landmarks of shape (5, 2) in the order left eye, right eye, "
            f"nose, left mouth, right mouth; got {landmarks.shape}"
        )
    return umeyama(landmarks, template_for(size))


BORDERS = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}


def pad_photo(
    img: np.ndarray, pad: float, border: str = "replicate"
) -> tuple[np.ndarray, tuple[int, int]]:
    """``img`` (H, W, 3) with ``pad`` x its height / width added on each side, by edge
    replication (default) or black (``border="constant"``); returns the padded photo and the
    ``(dx, dy)`` offset of the original."""
    if pad < 0:
        raise ValueError(f"pad must be >= 0 (a fraction of each side), got {pad}")
    if border not in BORDERS:
        raise ValueError(f"border must be one of {sorted(BORDERS)}, got {border!r}")
    h, w = img.shape[:2]
    dy, dx = round(pad * h), round(pad * w)
    if dx == dy == 0:
        return img, (0, 0)
    return cv2.copyMakeBorder(img, dy, dy, dx, dx, BORDERS[border], value=0), (dx, dy)


def norm_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Aligned ``(size, size, C)`` crop of ``image`` (HxWxC or HxW uint8, any channel order),
    black where it leaves the photo (insightface; a replicated border measured worse, see
    ``facekd.data.detect``)."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(
            f"image must be a non-empty HxW or HxWxC array, got {getattr(image, 'shape', image)}"
        )
    m = estimate_norm(landmarks, size)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ m[:, :2].T + m[:, 2]
