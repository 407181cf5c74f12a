"""ArcFace-template alignment: identity on the template, exact recovery, least-squares optimum."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facekd.data.align import (
    ARCFACE_TEMPLATE,
    estimate_norm,
    norm_crop,
    template_for,
    transform_points,
    umeyama,
)
from facekd.data.detect import Detection, select_faces
from tests.conftest import shared_path


def _similarity(scale, angle, tx, ty):
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def test_template_landmarks_align_to_identity():
    np.testing.assert_allclose(estimate_norm(ARCFACE_TEMPLATE, 112), np.eye(2, 3), atol=1e-12)


def test_published_template_values_and_sizes():
    # insightface arcface_dst: the 96x112 template shifted +8 px in x
    np.testing.assert_allclose(ARCFACE_TEMPLATE[0], [38.2946, 51.6963])
    np.testing.assert_allclose(template_for(56), ARCFACE_TEMPLATE / 2)
    np.testing.assert_allclose(template_for(128)[2], ARCFACE_TEMPLATE[2] + [8.0, 0.0])


@pytest.mark.parametrize("seed", range(5))
def test_random_similarity_is_recovered_exactly(seed):
    rng = np.random.default_rng(seed)
    m = _similarity(rng.uniform(0.3, 3), rng.uniform(-np.pi, np.pi), *rng.uniform(-50, 50, 2))
    src = rng.uniform(0, 200, (5, 2))
    np.testing.assert_allclose(umeyama(src, transform_points(src, m)), m, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_noisy_points_give_the_linear_least_squares_similarity(seed):
    """Independent check: a similarity without reflection is linear in (a, b, tx, ty):
    x' = a x - b y + tx, y' = b x + a y + ty, so ordinary least squares must agree."""
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 250, (5, 2))
    dst = ARCFACE_TEMPLATE + rng.normal(0, 2.0, (5, 2))
    rows = []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [([x, -y, 1, 0], u), ([y, x, 0, 1], v)]
    a, b, tx, ty = np.linalg.lstsq(
        np.array([r for r, _ in rows]), np.array([t for _, t in rows]), rcond=None
    )[0]
    np.testing.assert_allclose(umeyama(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-8)


def test_opencv_partial_affine_agrees_on_exact_data():
    rng = np.random.default_rng(7)
    src = rng.uniform(50, 200, (5, 2))
    dst = transform_points(src, _similarity(0.6, 0.3, 10, -4))
    m_cv, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    np.testing.assert_allclose(umeyama(src, dst), m_cv, atol=1e-4)  # OpenCV refines in float


def test_norm_crop_moves_landmarks_onto_the_template():
    img = np.zeros((300, 260, 3), np.uint8)
    m = _similarity(2.1, 0.2, 20, 35)
    landmarks = transform_points(ARCFACE_TEMPLATE, m)
    for x, y in landmarks.round().astype(int):
        cv2.circle(img, (int(x), int(y)), 4, (255, 255, 255), -1)
    crop = norm_crop(img, landmarks, 112)
    assert crop.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE.round().astype(int):
        assert crop[y, x].min() > 200, "a landmark blob should land on its template point"
    assert norm_crop(img[..., 0], landmarks, 56).shape == (56, 56)


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 2)), np.full((5, 2), np.nan), np.ones((5, 2)), np.zeros((5, 3))]
)
def test_bad_landmarks_raise(bad):
    with pytest.raises(ValueError):
        estimate_norm(bad)


def test_face_policies():
    def det(x1, y1, x2, y2, score):
        return Detection(np.array([x1, y1, x2, y2], float), score, np.zeros((5, 2)))

    faces = [det(0, 0, 100, 100, 0.99), det(90, 90, 130, 130, 0.95), det(150, 0, 160, 10, 1.0)]
    shape = (220, 220, 3)
    assert select_faces(faces, shape, "largest") == [faces[0]]
    assert select_faces(faces, shape, "center") == [faces[1]]
    assert select_faces(faces, shape, "score") == [faces[2]]
    assert select_faces(faces, shape, "all") == faces
    assert select_faces([], shape, "center") == []
    with pytest.raises(ValueError, match="center"):
        select_faces(faces, shape, "biggest")


def test_mtcnn_finds_one_face_per_lfw_image_and_aligns_it():
    from facekd.data.detect import FaceDetector

    root = shared_path("lfw-mini", "images")
    paths = sorted(root.rglob("*.jpg"))[:4]
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    found = FaceDetector().detect(images)
    for img, faces in zip(images, found, strict=True):
        assert len(faces) == 1 and faces[0].score > 0.9
        eyes = faces[0].landmarks[:2]
        assert eyes[0, 0] < eyes[1, 0], "left eye (image left) comes first"
        crop = norm_crop(img, faces[0].landmarks)
        assert crop.shape == (112, 112, 3) and crop.mean() > 20
    blank = np.full((250, 250, 3), 128, np.uint8)
    assert FaceDetector().detect([blank]) == [[]]
