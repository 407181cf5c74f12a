"""Scarce labels (``data.labelled_identities``): every photo stays a transfer photo, only the
first identities keep a label; the margin loss, the P x K sampler and the teacher cache agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facekd.config import ConfigError, ExperimentConfig, load_config
from facekd.data.batching import collate_batch
from facekd.data.partial_labels import PartialLabels
from facekd.data.sampler import PKBatchSampler
from facekd.data.synthetic import SyntheticFaces
from facekd.engine.builder import build_trainer, training_dataset
from facekd.models.heads import build_head


def test_labels_hidden_pixels_indices_and_manifest_kept():
    full = SyntheticFaces(5, 3, size=32)
    part = PartialLabels(full, 2)
    assert len(part) == len(full) and part.num_classes == 5  # a head column per identity
    assert part.labels.tolist() == [0, 0, 0, 1, 1, 1] + [-1] * 9 and part.labelled_images == 6
    for i in (0, 4, 7, 14):
        a, b = full[i], part[i]
        assert torch.equal(a["image"], b["image"]) and a["index"] == b["index"]
        assert b["label"] == (a["label"] if a["label"] < 2 else -1)
    assert part.manifest() == full.manifest()  # a cache of the full set serves every budget
    for bad in (0, 6, 2.0):
        with pytest.raises(ValueError, match=r"labelled_identities must be an int in \[1, 5\]"):
            PartialLabels(full, bad)


def test_margin_loss_and_pk_sampler_use_only_labelled_rows():
    part = PartialLabels(SyntheticFaces(6, 4, size=32), 3)
    batch = collate_batch([part[i] for i in range(len(part))])
    head = build_head("arcface", num_classes=6, embedding_size=8, scale=16.0, margin=0.3)
    emb = torch.randn(len(part), 8, generator=torch.Generator().manual_seed(0))
    labelled = batch.labels >= 0
    loss_all = head.loss(head(emb, batch.labels))
    loss_labelled = head.loss(head(emb[labelled], batch.labels[labelled]))
    torch.testing.assert_close(loss_all, loss_labelled)  # unlabelled rows add nothing
    drawn = np.concatenate(list(PKBatchSampler(part.labels, p=2, k=2, seed=0)))
    assert set(part.labels[drawn].tolist()) <= {0, 1, 2}  # never an unlabelled photo


def test_config_builds_the_transfer_set(tmp_path):
    tiny = [
        "data.identities=6", "data.images_per_identity=4", "data.image_size=32",
        "data.batch_size=8", "data.workers=0", "train.steps=2", "train.progress=false",
        "train.log_every=1", "data.labelled_identities=2", f"out_dir={tmp_path / 's'}",
        "student.kwargs={width: 0.25, num_features: 32}",
    ]  # fmt: skip
    cfg = load_config(ExperimentConfig, None, tiny)
    dataset = training_dataset(cfg)
    assert isinstance(dataset, PartialLabels) and dataset.labelled_images == 8
    trainer = build_trainer(cfg)
    assert trainer.distiller.head.num_classes == 6
    history = trainer.fit()
    assert len(history) == 2 and all(np.isfinite(r["ce"]) for r in history)
    with pytest.raises(ConfigError):
        load_config(ExperimentConfig, None, tiny + ["data.labelled_identities=two"])
