"""Identity-folder data set (labels, class maps, errors) and the P x K batch sampler."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facekd.data.batching import collate_batch
from facekd.data.folder import ImageFolderDataset, load_class_map
from facekd.data.sampler import PKBatchSampler
from facekd.data.transforms import to_tensor
from tests.conftest import shared_path


def _face(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)


def _tree(root, layout: dict[str, list[str]]) -> dict:
    """Write lossless images (PNG/BMP, whatever the name says) and return name -> RGB."""
    written = {}
    for i, (identity, names) in enumerate(layout.items()):
        (root / identity).mkdir(parents=True)
        for j, name in enumerate(names):
            rgb = _face(10 * i + j)
            ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            (root / identity / name).write_bytes(buf.tobytes())
            written[f"{identity}/{name}"] = rgb
    return written


# --- ImageFolderDataset -------------------------------------------------------------------
def test_sorted_labels_mixed_case_extensions_and_skipped_files(tmp_path):
    images = _tree(tmp_path, {"b_id": ["2.PNG", "1.jpeg"], "C": ["x.Jpg"], "a_id": ["z.webp"]})
    (tmp_path / "b_id" / "notes.txt").write_text("not an image")
    (tmp_path / "b_id" / "._1.jpeg").write_bytes(b"macOS resource fork")
    (tmp_path / "README.md").write_text("top-level files are not identities")
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["C", "a_id", "b_id"] and ds.num_classes == 3
    assert [p.relative_to(tmp_path).as_posix() for p, _ in ds.samples] == [
        "C/x.Jpg",
        "a_id/z.webp",
        "b_id/1.jpeg",
        "b_id/2.PNG",
    ]
    assert ds.labels.tolist() == [0, 1, 2, 2] and ds.labels.dtype == np.int64
    item = ds[3]
    assert torch.equal(item["image"], to_tensor(images["b_id/2.PNG"]))
    assert (item["label"], item["index"]) == (2, 3) and ds[-1]["index"] == 3


def test_class_map_round_trip_keeps_labels_across_runs(tmp_path):
    _tree(tmp_path / "train", {"bob": ["1.png"], "amy": ["1.png", "2.png"]})
    train = ImageFolderDataset(tmp_path / "train")
    train.save_classes(tmp_path / "classes.json")
    assert load_class_map(tmp_path / "classes.json") == {"amy": 0, "bob": 1}
    _tree(tmp_path / "later", {"bob": ["9.png"]})  # a subset: labels must not shift to 0
    later = ImageFolderDataset(tmp_path / "later", class_to_label=tmp_path / "classes.json")
    assert later.labels.tolist() == [1] and later.num_classes == 2
    _tree(tmp_path / "other", {"bob": ["1.png"], "zed": ["1.png"]})
    with pytest.raises(ValueError, match="not in the class map.*zed"):
        ImageFolderDataset(tmp_path / "other", class_to_label=train.class_to_label)


def test_transform_views_are_converted_and_collated(tmp_path):
    _tree(tmp_path, {"a": ["1.png", "2.png"]})

    def paired(img):
        return {
            "image": cv2.resize(img, (4, 4), interpolation=cv2.INTER_AREA),
            "teacher_image": img,
        }

    ds = ImageFolderDataset(tmp_path, transform=paired)
    batch = collate_batch([ds[0], ds[1]])
    assert batch.images.shape == (2, 3, 4, 4) and batch.teacher_images.shape == (2, 3, 8, 8)
    bad = ImageFolderDataset(tmp_path, transform=lambda img: {"student": img})
    with pytest.raises(ValueError, match="'image'"):
        bad[0]


def test_empty_root_and_folder_without_images_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no identity folders"):
        ImageFolderDataset(tmp_path)
    _tree(tmp_path, {"a": ["1.png"]})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "list.txt").write_text("x")
    with pytest.raises(ValueError, match=r"identity folder .*b holds no images.*list\.txt"):
        ImageFolderDataset(tmp_path)


def test_real_folder_labels_agree_with_recordio_list():
    root = shared_path("recordio-sample")
    ds = ImageFolderDataset(root / "faces_webface_112x112")
    lst = [line.split("\t") for line in (root / "train.lst").read_text().splitlines()]
    by_path = {rel: int(label) for _, label, rel in lst}
    assert {p.relative_to(ds.root).as_posix(): lab for p, lab in ds.samples} == by_path
    assert ds[0]["image"].shape == (3, 112, 112)


# --- PKBatchSampler -----------------------------------------------------------------------
def _labels(counts):
    return np.repeat(np.arange(len(counts)), counts)


def _check_pk(batches, labels, p, k):
    for batch in batches:
        per_id = Counter(labels[batch].tolist())
        assert len(batch) == p * k and len(per_id) == p and set(per_id.values()) == {k}


def test_every_batch_is_p_identities_times_k_images():
    labels = _labels([1, 2, 3, 5, 8, 13, 4, 4])
    sampler = PKBatchSampler(labels, p=3, k=4, num_batches=20)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20
    _check_pk(batches, labels, 3, 4)
    for batch in batches:  # identities with >= k images never repeat an image in a batch
        big = [i for i in batch if np.sum(labels == labels[i]) >= 4]
        assert len(big) == len(set(big))
    used = Counter(labels[np.concatenate(batches)].tolist())
    assert used[0] > 0  # the 1-image identity is padded with replacement


def test_min_images_skips_small_identities_and_too_few_identities_fails():
    labels = np.concatenate([_labels([1, 2, 3, 5, 8, 13]), [-1, -1]])  # -1: unlabelled
    batches = list(PKBatchSampler(labels, p=2, k=4, min_images=4, num_batches=30))
    _check_pk(batches, labels, 2, 4)
    assert set(labels[np.concatenate(batches)].tolist()) == {3, 4, 5}
    with pytest.raises(ValueError, match="p=4 identities with >= 4 images; only 3 of 6"):
        PKBatchSampler(labels, p=4, k=4, min_images=4)


def test_ranks_are_disjoint_equal_length_and_cover_the_data():
    labels = _labels([4] * 8)  # 32 images, P*K = 4: 8 global batches, each image once
    ranks = [PKBatchSampler(labels, p=2, k=2, rank=r, world_size=2, seed=3) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4
    seen = [i for s in ranks for batch in s for i in batch]
    assert sorted(seen) == list(range(32))
    single = list(PKBatchSampler(labels, p=2, k=2, num_batches=8, seed=3))
    assert list(ranks[1]) == single[1::2]  # the same global order, dealt round-robin
    three = [PKBatchSampler(_labels([3] * 7), 2, 2, rank=r, world_size=3) for r in range(3)]
    assert len({len(list(s)) for s in three}) == 1


def test_deterministic_per_seed_and_epoch():
    labels = _labels([6] * 10)
    a, b = PKBatchSampler(labels, 4, 3, seed=1), PKBatchSampler(labels, 4, 3, seed=1)
    first = list(a)
    assert first == list(b) == list(a)  # re-iterating the same epoch repeats it
    a.set_epoch(1)
    assert list(a) != first
    assert list(PKBatchSampler(labels, 4, 3, seed=2)) != first


def test_resume_continues_with_exactly_the_remaining_batches():
    labels = _labels([5, 6, 7, 8, 9, 3])
    ref = PKBatchSampler(labels, 2, 3, num_batches=9)
    ref.set_epoch(4)
    full = list(ref)

    run = PKBatchSampler(labels, 2, 3, num_batches=9)
    run.set_epoch(4)
    it = iter(run)
    done = [next(it) for _ in range(3)]
    state = run.state_dict()
    assert state["epoch"] == 4 and state["batch"] == 3 and done == full[:3]

    resumed = PKBatchSampler(labels, 2, 3, num_batches=9)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # the usual per-epoch call keeps the resume position
    assert len(resumed) == 6 and list(resumed) == full[3:]
    resumed.set_epoch(5)
    ref.set_epoch(5)
    assert list(resumed) == list(ref)

    explicit = PKBatchSampler(labels, 2, 3, num_batches=9)
    explicit.set_epoch(4, start_batch=7)
    assert list(explicit) == full[7:]
    with pytest.raises(ValueError, match="seed"):
        PKBatchSampler(labels, 2, 3, num_batches=9, seed=5).load_state_dict(state)


def test_as_dataloader_batch_sampler(tmp_path):
    _tree(tmp_path, {f"id{i}": [f"{j}.png" for j in range(3)] for i in range(4)})
    ds = ImageFolderDataset(tmp_path)
    sampler = PKBatchSampler(ds.labels, p=2, k=2, num_batches=3)
    assert not torch.distributed.is_initialized() and (sampler.rank, sampler.world_size) == (0, 1)
    batches = list(DataLoader(ds, batch_sampler=sampler, collate_fn=collate_batch))
    assert len(batches) == 3
    for batch in batches:
        assert sorted(Counter(batch.labels.tolist()).values()) == [2, 2]
        assert torch.equal(batch.labels, torch.as_tensor(ds.labels[batch.index.numpy()]))


def test_shuffled_batches_are_disjoint_across_ranks_and_deterministic():
    from facekd.data.sampler import ShuffledBatchSampler

    ranks = [ShuffledBatchSampler(103, 5, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = [i for s in ranks for b in s for i in b]
    assert len(ranks[0]) == len(ranks[1]) == 10 and len(seen) == len(set(seen)) == 100
    first = list(ranks[0])
    assert first == list(ranks[0])
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != first
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        ShuffledBatchSampler(7, 4, rank=0, world_size=2)
