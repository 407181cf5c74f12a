"""A distillation run trains on the right targets and differs from its baseline only in the
method: cache vs augmentation, logit scales, stale data, resume, same start, P x K, neuron
selection's teacher, duplicate losses, unreadable images (issue "wrong targets")."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from facekd.cli import main
from facekd.config import ExperimentConfig, load_config
from facekd.data.augment import build_transform
from facekd.data.batching import collate_batch
from facekd.data.folder import ImageFolderDataset
from facekd.data.synthetic import SyntheticFaces
from facekd.data.transforms import ImageDecodeError, read_rgb
from facekd.engine.builder import (
    build_distiller,
    build_trainer,
    teacher_view_is_random,
    training_dataset,
    transform_flips,
)
from facekd.models import build_backbone
from facekd.models.checkpoints import load_backbone, save_backbone
from facekd.teachers.cache import CacheMismatchError, build_teacher_cache

TINY = [
    "data.identities=4",
    "data.images_per_identity=4",
    "data.image_size=32",
    "data.batch_size=8",
    "data.workers=0",
    "student.kwargs={width: 0.25}",
    "train.steps=2",
    "train.progress=false",
    "train.log_every=1",
]


def _cfg(tmp_path, *extra, out="run"):
    return load_config(ExperimentConfig, None, [*TINY, f"out_dir={tmp_path / out}", *extra])


@pytest.fixture
def teacher_file(tmp_path):
    torch.manual_seed(1)
    teacher = build_backbone("iresnet18", width=0.125, input_size=32, num_features=128)
    return save_backbone(teacher, tmp_path / "teacher.pt")


@pytest.mark.parametrize(
    "spec, random_view, flips",
    [
        ({}, False, True),  # an empty dict is the default flip, not "no augmentation"
        ({"preset": "flip"}, False, True),
        ({"flip_p": 0.0}, False, False),
        ({"preset": "photometric"}, True, True),  # the preset's jitter, not a YAML key
        ({"preset": "occlusion", "flip_p": 0.0}, True, False),
        ({"low_res_size": 16, "blur_p": 1.0, "jpeg_p": 1.0}, False, True),  # student view only
    ],
)
def test_the_built_transform_decides_whether_a_cache_can_stand_in(spec, random_view, flips):
    transform = build_transform(spec)
    assert teacher_view_is_random(transform) is random_view
    assert transform_flips(transform) is flips


@pytest.mark.parametrize("student_size", [None, 16])
def test_cached_teacher_equals_the_online_teacher_on_plain_and_mirrored_faces(
    tmp_path, teacher_file, student_size
):
    cfg = _cfg(
        tmp_path,
        f"teacher.model={teacher_file}",
        f"teacher.cache={tmp_path / 'cache'}",
        "teacher.cache_dtype=float32",
        "teacher.cache_stages=[-1]",
        "losses=[{name: embedding}]",
        f"data.student_size={'null' if student_size is None else student_size}",
    )  # default augmentation: flip 0.5
    data = training_dataset(cfg)
    distiller = build_distiller(cfg, data)
    assert distiller.teacher is None and distiller.teacher_cache.has_flip
    batch = collate_batch([data[i] for i in range(len(data))])
    assert 0 < int(batch.flipped.sum()) < len(batch), "both views occur"
    cached = distiller.teacher_outputs(batch)
    with torch.no_grad():
        live = load_backbone(teacher_file).forward_features(batch.teacher_view)
    torch.testing.assert_close(cached.embedding, live.embedding, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cached.stages[-1], live.stages[-1], rtol=1e-4, atol=1e-5)


def test_fitted_teacher_head_takes_the_student_scale_and_other_scales_are_refused(
    tmp_path, teacher_file
):
    common = [
        f"teacher.model={teacher_file}",
        "teacher.head=fit",
        "head={name: arcface, kwargs: {scale: 32.0}}",
        "losses=[{name: hinton}]",
    ]
    cfg = _cfg(tmp_path, *common)
    distiller = build_distiller(cfg, training_dataset(cfg))
    assert distiller.teacher_head.scale == 32.0 == distiller.head.scale
    cfg = _cfg(tmp_path, *common, "teacher.head_fit={kwargs: {scale: 64.0}}")
    with pytest.raises(ValueError, match=r"teacher head s=64.*student head s=32"):
        build_distiller(cfg, training_dataset(cfg))


def test_a_rewritten_or_moved_folder_is_refused_naming_what_changed(tmp_path, teacher_file):
    root = SyntheticFaces(2, 3, size=32).write_folder(tmp_path / "faces", progress=False)
    teacher = load_backbone(teacher_file)

    def build(folder):
        data = ImageFolderDataset(folder)
        return build_teacher_cache(teacher, data, tmp_path / "c", "p", progress=False)

    build(root)
    image = root / "00001" / "0002.png"  # re-aligned: other pixels, same name and layout
    cv2.imwrite(str(image), np.full((32, 32, 3), 90, np.uint8))
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    with pytest.raises(CacheMismatchError, match=r"1 file\(s\) rewritten.*00001/0002.png"):
        build(root)
    shutil.rmtree(tmp_path / "c")
    build(root)
    moved = shutil.copytree(root, tmp_path / "elsewhere", copy_function=shutil.copy2)
    with pytest.raises(CacheMismatchError, match="path: "):
        build(moved)


def test_a_second_fit_continues_and_matches_an_uninterrupted_run(tmp_path):
    whole = build_trainer(_cfg(tmp_path, "train.steps=3", out="a")).fit()
    trainer = build_trainer(_cfg(tmp_path, "train.steps=3", out="b"))
    trainer.fit(stop_at=1)
    optimizer, scheduler = trainer.optimizer, trainer.scheduler
    parts = trainer.fit()
    assert trainer.optimizer is optimizer and trainer.scheduler is scheduler
    assert [r["loss"] for r in parts] == pytest.approx([r["loss"] for r in whole], abs=1e-6)


def test_resume_refuses_changed_training_keys_and_keeps_running_averages(tmp_path):
    cfg = _cfg(tmp_path, "train.steps=2", "train.log_every=2")
    whole = build_trainer(_cfg(tmp_path, "train.steps=2", "train.log_every=2", out="a")).fit()
    build_trainer(cfg).fit(stop_at=1)  # paused between two log rows
    for change, key in (("train.lr=0.05", "train.lr"), ("train.steps=3", "train.steps")):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            build_trainer(_cfg(tmp_path, "train.steps=2", "train.log_every=2", change)).resume()
    trainer = build_trainer(cfg)
    assert trainer.resume()
    resumed = trainer.fit()
    assert resumed[-1]["loss"] == pytest.approx(whole[-1]["loss"], abs=1e-6), "mean of 2 steps"
    longer = build_trainer(_cfg(tmp_path, "train.steps=3", "train.log_every=2"))
    assert longer.resume(allow_steps_change=True)
    assert longer.fit()[-1]["step"] == 3


@pytest.mark.parametrize("cached", [False, True])
def test_scratch_and_distilled_students_start_identically(tmp_path, teacher_file, cached):
    zero = ["train.steps=1", "train.lr=0.0"]
    build_trainer(_cfg(tmp_path, *zero, out="scratch")).fit()
    extra = [f"teacher.cache={tmp_path / 'cache'}"] if cached else []
    distilled = _cfg(
        tmp_path, *zero, f"teacher.model={teacher_file}", "losses=[{name: embedding}]", *extra,
        out="kd",
    )  # fmt: skip
    build_trainer(distilled).fit()
    a = torch.load(tmp_path / "scratch" / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "kd" / "student.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "same weights, same batches (BN stats too)"


def test_mining_losses_need_pk_batches_and_log_their_triplets(tmp_path, teacher_file, capsys):
    kd = [f"teacher.model={teacher_file}", "losses=[{name: triplet_distillation}]"]
    with pytest.raises(ValueError, match="data.sampler: pk"):
        build_trainer(_cfg(tmp_path, *kd))
    argv = [
        "train",
        "--set",
        f"out_dir={tmp_path / 'cli'}",
        *sum([["--set", a] for a in TINY + kd], []),
    ]
    assert main(argv) == 2 and "P x K" in capsys.readouterr().err
    history = build_trainer(_cfg(tmp_path, *kd, "data.sampler=pk", "data.p=2", "data.k=4")).fit()
    assert all(r["stats/triplet_distillation/triplets"] > 0 for r in history)
    assert all(0.0 <= r["stats/triplet_distillation/active"] <= 1.0 for r in history)


def test_neuron_selection_student_is_k_wide_and_bound_to_its_teacher(tmp_path, teacher_file):
    from facekd.teachers.select_neurons import run_selection

    teacher = load_backbone(teacher_file)
    run_selection(teacher, SyntheticFaces(4, 4, size=32), tmp_path / "sel.json", k=24)
    ns = [f"losses=[{{name: neuron_selection, kwargs: {{selection: {tmp_path / 'sel.json'}}}}}]"]
    cfg = _cfg(tmp_path, f"teacher.model={teacher_file}", "head=null", *ns)
    distiller = build_distiller(cfg, training_dataset(cfg))
    assert (
        distiller.student.num_features == 24
        and distiller.losses["neuron_selection"].adapter is None
    )
    torch.manual_seed(2)
    other = save_backbone(
        build_backbone("iresnet18", width=0.125, input_size=32), tmp_path / "o.pt"
    )
    cfg = _cfg(tmp_path, f"teacher.model={other}", "head=null", *ns)
    with pytest.raises(ValueError, match="made from teacher"):
        build_distiller(cfg, training_dataset(cfg))


def test_two_losses_with_one_name_are_refused_or_keyed_apart(tmp_path, teacher_file):
    teacher = f"teacher.model={teacher_file}"
    cfg = _cfg(tmp_path, teacher, "losses=[{name: embedding}, {name: embedding, weight: 2}]")
    with pytest.raises(ValueError, match="more than once"):
        build_distiller(cfg, training_dataset(cfg))
    keyed = "losses=[{name: embedding, key: a}, {name: embedding, key: b, weight: 2}]"
    cfg = _cfg(tmp_path, teacher, keyed)
    distiller = build_distiller(cfg, training_dataset(cfg))
    assert sorted(distiller.losses) == ["a", "b"] and distiller.weights == {"a": 1.0, "b": 2.0}


def test_a_truncated_image_is_reported_never_trained_on_and_never_kills_a_resume(tmp_path):
    root = SyntheticFaces(2, 4, size=32).write_folder(tmp_path / "faces", progress=False)
    bad = root / "00000" / "0001.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    encoded = cv2.imencode(".jpg", noise)[1].tobytes()
    bad.write_bytes(encoded[: len(encoded) * 3 // 4])  # an interrupted copy
    (root / "00000" / "0001.png").unlink()
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):  # whatever OpenCV's version does
        read_rgb(bad, strict=True)
    with pytest.raises(ImageDecodeError, match="truncated JPEG") as err:
        ImageFolderDataset(root)[1]
    assert str(bad) in str(err.value)
    folder = ["data.source=folder", f"data.path={root}", "data.batch_size=4", "train.steps=3"]
    build_trainer(_cfg(tmp_path, *folder)).fit(stop_at=1)
    trainer = build_trainer(_cfg(tmp_path, *folder))
    assert trainer.resume()
    assert trainer.fit()[-1]["step"] == 3
    assert str(bad) in (tmp_path / "run" / "unreadable.txt").read_text()
