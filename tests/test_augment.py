"""FaceAugment: shared flip, student-only degradation, validation, seeding."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from facekd.data.augment import PRESETS, FaceAugment, build_transform
from facekd.data.transforms import resize


@pytest.fixture
def face() -> np.ndarray:
    """A left-right asymmetric 64x64 image: red ramp on the left, blue block on the right."""
    img = np.full((64, 64, 3), 40, np.uint8)
    img[:, :24, 0] = np.linspace(80, 250, 24, dtype=np.uint8)[None, :]
    img[10:50, 40:60, 2] = 230
    img[5:12, 5:30] = 255  # a bar near the top-left corner
    return img


def test_flip_is_shared_by_both_views(face):
    aug = FaceAugment(flip_p=0.5, low_res_size=32)
    flipped = 0
    for seed in range(24):
        out = aug(face, seed=seed)
        teacher, student = out["teacher_image"], out["image"]
        was_flipped = np.array_equal(teacher, face[:, ::-1])
        assert was_flipped or np.array_equal(teacher, face)
        np.testing.assert_array_equal(student, resize(teacher, 32))  # same orientation
        flipped += was_flipped
    assert 4 <= flipped <= 20  # p = 0.5 over 24 draws: both branches are exercised


def test_views_have_their_sizes(face):
    out = FaceAugment(low_res_size=16)(face, seed=0)
    assert out["image"].shape == (16, 16, 3) and out["teacher_image"].shape == (64, 64, 3)
    assert out["image"].dtype == np.uint8 and out["teacher_image"].dtype == np.uint8
    back = FaceAugment(low_res_size=16, upsample_back=True)(face, seed=0)
    assert back["image"].shape == (64, 64, 3)
    assert not np.array_equal(back["image"], back["teacher_image"])  # detail is lost
    single = FaceAugment(low_res_size=16, paired=False)(face, seed=0)
    assert isinstance(single, np.ndarray) and single.shape == (16, 16, 3)
    plain = FaceAugment(flip_p=0.0)(face, seed=0)
    np.testing.assert_array_equal(plain, face)


def test_default_down_sampling_is_the_area_resize_of_transforms(face):
    out = FaceAugment(flip_p=0.0, low_res_size=24)(face, seed=3)
    np.testing.assert_array_equal(out["image"], resize(face, 24, cv2.INTER_AREA))
    np.testing.assert_array_equal(out["teacher_image"], face)


@pytest.mark.parametrize("option", [{"jpeg_p": 1.0}, {"blur_p": 1.0}])
def test_jpeg_and_blur_change_only_the_student(face, option):
    clean = FaceAugment(flip_p=0.0, low_res_size=32)(face, seed=1)
    degraded = FaceAugment(flip_p=0.0, low_res_size=32, **option)(face, seed=1)
    assert np.abs(clean["image"].astype(int) - degraded["image"]).mean() > 0.5
    np.testing.assert_array_equal(clean["teacher_image"], degraded["teacher_image"])


@pytest.mark.parametrize(
    "option", [{"photometric_p": 1.0}, {"occlusion_p": 1.0}, {"affine_p": 1.0}]
)
def test_photometric_occlusion_and_jitter_are_shared(face, option):
    aug = FaceAugment(flip_p=0.0, low_res_size=32, **option)
    out = aug(face, seed=2)
    assert not np.array_equal(out["teacher_image"], face)
    np.testing.assert_array_equal(out["image"], resize(out["teacher_image"], 32))
    assert aug.teacher_view_random  # no cache may stand in: the teacher runs online


def test_alignment_jitter_is_small(face):
    # a shift of at most 4 % and 6 degrees keeps most of the face where alignment put it
    aug = FaceAugment(flip_p=0.0, affine_p=1.0)
    moved = [np.abs(aug(face, seed=s).astype(int) - face).mean() for s in range(10)]
    assert 0 < max(moved) < np.abs(face.astype(int) - face.mean()).mean()  # < a flat image
    assert len({round(m, 3) for m in moved}) > 5  # a new jitter per call
    assert build_transform("consistent").teacher_view_random
    assert not build_transform("flip").teacher_view_random


def test_random_interpolation_varies_the_student(face):
    aug = FaceAugment(flip_p=0.0, low_res_size=20, interpolation="random")
    students = {aug(face, seed=s)["image"].tobytes() for s in range(30)}
    assert len(students) >= 3
    fixed = FaceAugment(flip_p=0.0, low_res_size=20, interpolation=["nearest"])
    np.testing.assert_array_equal(fixed(face, seed=0)["image"], resize(face, 20, cv2.INTER_NEAREST))


def test_seeding_reproduces_augmentation(face):
    aug = FaceAugment(photometric_p=0.8, occlusion_p=0.5, low_res_size=32, jpeg_p=0.5, blur_p=0.5)

    def same(a, b):
        return all(np.array_equal(a[k], b[k]) for k in a)

    assert same(aug(face, seed=11), aug(face, seed=11))
    assert not same(aug(face, seed=11), aug(face, seed=12))
    # an instance seed gives a reproducible stream of calls, whatever else runs in between
    s1 = [FaceAugment(photometric_p=0.8, seed=7) for _ in range(2)]
    first = [s1[0](face) for _ in range(4)]
    random.random()
    assert all(np.array_equal(a, s1[1](face)) for a in first)
    assert not all(np.array_equal(first[0], x) for x in first[1:])
    # seed=None follows Python's global RNG (what facekd.engine.trainer.SeededItems seeds per item)
    free = FaceAugment(photometric_p=0.8)
    random.seed(5)
    a = free(face)
    random.seed(5)
    np.testing.assert_array_equal(a, free(face))


def test_build_transform_presets_and_key_validation(face):
    assert build_transform(None) is None and build_transform("none") is None
    for name in PRESETS:
        out = build_transform(name)(face, seed=0)
        assert isinstance(out, (np.ndarray, dict))
    aug = build_transform({"preset": "low_res_32", "upsample_back": True, "seed": 1})
    assert aug.low_res_size == 32 and aug.upsample_back
    with pytest.raises(ValueError, match=r"unknown transform keys \['flipp'\].*flip_p"):
        build_transform({"flipp": 0.5})
    with pytest.raises(ValueError, match="low_res_56"):
        build_transform("low_res_57")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"flip_p": 1.5},
        {"low_res_size": 2},
        {"interpolation": "bilinear"},
        {"jpeg_quality": (90, 30)},
        {"blur_sigma": (2.0,)},
        {"seed": 1.5},
    ],
)
def test_invalid_options_raise(kwargs):
    with pytest.raises(ValueError):
        FaceAugment(**kwargs)


def test_rejects_non_uint8_images(face):
    with pytest.raises(ValueError, match="uint8"):
        FaceAugment()(face.astype(np.float32))
