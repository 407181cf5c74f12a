"""Teacher cache: equals the live teacher, refuses stale keys, resumes, feeds the Distiller."""

from __future__ import annotations

import json

import pytest
import torch

from facekd.data.batching import collate_batch
from facekd.engine.distiller import Distiller
from facekd.losses import build_loss
from facekd.models import build_backbone
from facekd.teachers.cache import CacheMismatchError, TeacherCache, build_teacher_cache


class Faces(torch.utils.data.Dataset):
    def __init__(self, n=10, size=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.labels = list(range(n))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": i, "index": i}


def _teacher(seed=0):
    torch.manual_seed(seed)
    return build_backbone("iresnet18", width=0.125, input_size=32, num_features=128).eval()


def test_cached_outputs_equal_the_live_teacher(tmp_path):
    teacher, data = _teacher(), Faces()
    cache = build_teacher_cache(
        teacher,
        data,
        tmp_path / "c",
        "112-arcface",
        stages=(-1,),
        batch_size=4,
        dtype="float32",
        progress=False,
    )
    idx = torch.tensor([7, 0, 3])
    got = cache.lookup(idx)
    with torch.no_grad():
        live = teacher.forward_features(collate_batch([data[i] for i in idx.tolist()]).images)
    torch.testing.assert_close(got.embedding, live.embedding)
    torch.testing.assert_close(got.pooled, live.pooled)
    assert got.stages[:-1] == [None] * (len(live.stages) - 1)
    torch.testing.assert_close(got.stages[-1], live.stages[-1])


def test_float16_cache_is_close(tmp_path):
    teacher, data = _teacher(), Faces()
    cache = build_teacher_cache(teacher, data, tmp_path / "c", "p", progress=False)
    with torch.no_grad():
        live = teacher(data.x[:2])
    cos = torch.nn.functional.cosine_similarity(cache.lookup(torch.tensor([0, 1])).embedding, live)
    assert cos.min() > 0.9999


def test_stale_cache_is_refused_naming_what_differs(tmp_path):
    data = Faces()
    build_teacher_cache(_teacher(0), data, tmp_path / "c", "112", progress=False)
    with pytest.raises(CacheMismatchError, match="another teacher"):
        build_teacher_cache(_teacher(1), data, tmp_path / "c", "112", progress=False)
    with pytest.raises(CacheMismatchError, match="another dataset"):
        build_teacher_cache(_teacher(0), Faces(n=12), tmp_path / "c", "112", progress=False)
    with pytest.raises(CacheMismatchError, match="another preprocessing"):
        build_teacher_cache(_teacher(0), data, tmp_path / "c", "56", progress=False)
    with pytest.raises(IndexError):
        TeacherCache(tmp_path / "c").lookup(torch.tensor([10]))


def test_interrupted_build_resumes_where_it_stopped(tmp_path, monkeypatch):
    teacher, data = _teacher(), Faces()
    calls, killed = [], []
    original = teacher.forward_features

    class Killed(Exception):
        pass

    def counting(x):
        calls.append(len(x))
        if len(calls) == 2 and not killed:  # chunk 1, then killed in chunk 2 (no probe pass)
            killed.append(True)
            raise Killed
        return original(x)

    monkeypatch.setattr(teacher, "forward_features", counting)
    with pytest.raises(Killed):
        build_teacher_cache(teacher, data, tmp_path / "c", "p", batch_size=4, progress=False)
    assert not (tmp_path / "c" / "meta.json").exists(), "a half-built cache is never final"
    assert json.loads((tmp_path / "c" / "progress.json").read_text())["done"] == 4
    calls.clear()
    monkeypatch.setattr(teacher, "forward_features", counting)
    cache = build_teacher_cache(teacher, data, tmp_path / "c", "p", batch_size=4, progress=False)
    assert calls == [4, 2], "resumed at image 4: chunks of 4 and 2 images remain"
    assert len(cache) == 10 and not (tmp_path / "c" / "progress.json").exists()


def test_distiller_with_cache_matches_online_teacher(tmp_path):
    teacher, data = _teacher(), Faces()
    cache = build_teacher_cache(teacher, data, tmp_path / "c", "p", dtype="float32", progress=False)
    torch.manual_seed(0)
    student = build_backbone("mobilefacenet", width=0.25, input_size=32).eval()
    batch = collate_batch([data[i] for i in (2, 5, 9)])
    online = Distiller(student, losses={"e": build_loss("embedding")}, teacher=teacher).eval()
    cached = Distiller(student, losses={"e": build_loss("embedding")}, teacher_cache=cache).eval()
    torch.testing.assert_close(online(batch)["kd/e"], cached(batch)["kd/e"])


def test_distiller_refuses_a_cache_without_the_needed_fields(tmp_path):
    cache = build_teacher_cache(
        _teacher(), Faces(), tmp_path / "c", "p", fields=("embedding",), progress=False
    )

    class NeedsPooled(type(build_loss("embedding"))):
        requires = frozenset({"pooled"})

    student = build_backbone("mobilefacenet", width=0.25, input_size=32)
    with pytest.raises(ValueError, match="pooled"):
        Distiller(student, losses={"p": NeedsPooled()}, teacher_cache=cache)


def test_values_beyond_float16_are_refused_not_stored_as_inf(tmp_path):
    teacher = _teacher()
    with torch.no_grad():
        teacher.features.bias.fill_(1e6)
    with pytest.raises(ValueError, match="not finite once stored as float16"):
        build_teacher_cache(teacher, Faces(), tmp_path / "c", "p", progress=False)


def test_loader_workers_fetch_the_rows_and_the_distiller_uses_them(tmp_path, monkeypatch):
    import pickle

    from facekd.data.sampler import ShuffledBatchSampler
    from facekd.engine.trainer import Trainer, TrainSettings
    from facekd.teachers.cache_rows import WithTeacherRows

    teacher, data = _teacher(), Faces()
    cache = build_teacher_cache(teacher, data, tmp_path / "c", "p", dtype="float32", progress=False)
    # pickled as its folder (spawned workers), reopened with the same rows
    again = pickle.loads(pickle.dumps(cache))
    assert len(pickle.dumps(cache)) < 2_000
    torch.testing.assert_close(again.lookup(torch.tensor([4])).embedding,
                               cache.lookup(torch.tensor([4])).embedding)  # fmt: skip
    batch = WithTeacherRows(cache)([data[i] for i in (2, 5, 9)])
    torch.testing.assert_close(batch.teacher.embedding, cache.lookup(batch.index).embedding)
    torch.manual_seed(0)
    student = build_backbone("mobilefacenet", width=0.25, input_size=32).eval()
    cached = Distiller(student, losses={"e": build_loss("embedding")}, teacher_cache=cache).eval()
    want = cached(collate_batch([data[i] for i in (2, 5, 9)]))["kd/e"]  # the training thread reads
    monkeypatch.setattr(cache, "lookup", lambda *a, **k: pytest.fail("read on the training thread"))
    torch.testing.assert_close(cached(batch)["kd/e"], want)
    # the Trainer's loader (2 worker processes here) hands every batch over with its rows
    sampler = ShuffledBatchSampler(len(data), 4, seed=0)
    settings = TrainSettings(steps=1, progress=False)
    trainer = Trainer(cached.train(), data, sampler, settings, tmp_path / "run", num_workers=2)
    monkeypatch.undo()
    first = next(iter(trainer.loader))
    torch.testing.assert_close(first.teacher.embedding, cache.lookup(first.index).embedding)
