"""``data.exclude_identities``: held-out (dev-split) identities never reach training.

The key test trains for real (a tiny config through ``build_trainer``, teacher cache included)
and records every image file the data layer decodes: none may belong to an excluded identity,
while the same run without the exclusion does read them (so the check can fail).
"""

from __future__ import annotations

import numpy as np
import pytest

import facekd.data.folder as folder_module
from facekd.config import ExperimentConfig, load_config
from facekd.data.folder import ImageFolderDataset, exclusion_list, load_identity_list
from facekd.data.recordio import RecordIODataset, RecordIOWriter
from facekd.data.synthetic import SyntheticFaces
from facekd.engine.builder import build_dataset, build_trainer

HELD_OUT = ["00001", "00004"]  # folder names written by SyntheticFaces.write_folder


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """6 identities x 2 images of 32 px: ``root/00000 .. 00005/000{0,1}.png``."""
    root = tmp_path_factory.mktemp("faces")
    return SyntheticFaces(6, 2, size=32, seed=3).write_folder(root, progress=False)


def _cfg(tmp_path, root, *extra: str) -> ExperimentConfig:
    return load_config(
        ExperimentConfig,
        None,
        [
            f"out_dir={tmp_path / 'run'}",
            "data.source=folder",
            "student.kwargs={width: 0.25}",
            f"data.path={root}",
            "data.image_size=32",
            "data.batch_size=4",
            "data.workers=0",
            "train.steps=3",
            "train.progress=false",
            "train.checkpoint_every=1000",
            "train.log_every=1",
            *extra,
        ],
    )


# --- the data set -------------------------------------------------------------------------
def test_folder_exclude_drops_exactly_those_folders_with_contiguous_labels(faces):
    full = ImageFolderDataset(faces)
    ds = ImageFolderDataset(faces, exclude=[*HELD_OUT, "not_here"])
    assert ds.classes == ["00000", "00002", "00003", "00005"]
    assert ds.excluded_identities == HELD_OUT and ds.num_excluded == 2
    assert ds.class_to_label == {name: i for i, name in enumerate(ds.classes)}
    assert sorted(set(ds.labels.tolist())) == [0, 1, 2, 3] and ds.num_classes == 4
    assert len(ds) == 8 and not any(p.parent.name in HELD_OUT for p, _ in ds.samples)
    # the cache key changes with the exclusion and records it
    assert ds.manifest()["excluded_identities"] == HELD_OUT
    assert ds.manifest()["files"] != full.manifest()["files"]
    # absent names exclude nothing and leave the manifest as it was
    assert ImageFolderDataset(faces, exclude=["zzz"]).manifest() == full.manifest()
    # a class map from another run keeps its labels; an excluded identity in it has no images
    kept = ImageFolderDataset(faces, class_to_label=full.class_to_label, exclude=HELD_OUT)
    assert sorted(set(kept.labels.tolist())) == [0, 2, 3, 5] and kept.num_classes == 6
    with pytest.raises(ValueError, match="all 6 identity folders .* are excluded"):
        ImageFolderDataset(faces, exclude=full.classes)
    with pytest.raises(TypeError, match="load_identity_list"):
        ImageFolderDataset(faces, exclude="dev.txt")


def test_recordio_exclude_filters_by_label(tmp_path):
    rng = np.random.default_rng(0)
    for header in (False, True):
        rec = tmp_path / f"h{header}" / "train.rec"
        rec.parent.mkdir()
        with RecordIOWriter(rec, header=header) as w:
            for label in (0, 0, 1, 1, 2, 3, 3):
                w.write(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), label)
        full = RecordIODataset(rec.parent)
        ds = RecordIODataset(rec.parent, exclude=["1", 3, "99"])
        assert ds.labels.tolist() == [0, 0, 2] and len(ds) == 3
        assert [ds[i]["label"] for i in range(3)] == [0, 0, 2] and ds[2]["index"] == 2
        assert ds.excluded_identities == [1, 3] and ds.num_classes == full.num_classes == 4
        assert ds.manifest()["excluded_labels"] == [1, 3] and ds.manifest()["count"] == 3
        assert ds.manifest()["headers_sha256"] != full.manifest()["headers_sha256"]
        with pytest.raises(ValueError, match="integer labels.*'bob'"):
            RecordIODataset(rec.parent, exclude=["bob"])
        with pytest.raises(ValueError, match="every image .* excluded"):
            RecordIODataset(rec.parent, exclude=[0, 1, 2, 3])


# --- the config ---------------------------------------------------------------------------
def test_config_reads_a_list_file_and_rejects_what_it_cannot_use(tmp_path, faces):
    dev = tmp_path / "dev.txt"
    dev.write_text("# dev split\n00001\n\n  00004  \n# 00002 stays\nother_source_id\n")
    assert load_identity_list(dev) == ["00001", "00004", "other_source_id"]
    yaml = tmp_path / "cfg.yaml"
    yaml.write_text(f"data:\n  source: folder\n  path: {faces}\n  exclude_identities: {dev}\n")
    cfg = load_config(ExperimentConfig, yaml)
    assert cfg.data.exclude_identities == str(dev)
    assert exclusion_list(cfg.data.exclude_identities, "folder") == [
        "00001",
        "00004",
        "other_source_id",
    ]
    assert build_dataset(cfg, None).classes == ["00000", "00002", "00003", "00005"]

    listed = load_config(ExperimentConfig, None, ['data.exclude_identities=["00001", 7]'])
    assert listed.data.exclude_identities == ["00001", 7]  # recordio labels may be ints

    missing = load_config(ExperimentConfig, yaml, [f"data.exclude_identities={tmp_path}/no.txt"])
    with pytest.raises(ValueError, match=r"data.exclude_identities: .*not found: .*no\.txt"):
        build_dataset(missing, None)
    unquoted = load_config(ExperimentConfig, yaml, ["data.exclude_identities=[0001]"])
    with pytest.raises(ValueError, match="quote identity folder names"):
        build_dataset(unquoted, None)
    everyone = load_config(
        ExperimentConfig, yaml, [f"data.exclude_identities={[f'{i:05d}' for i in range(6)]}"]
    )
    with pytest.raises(ValueError, match="are excluded"):
        build_dataset(everyone, None)

    synthetic = ["data.source=synthetic", "data.identities=2", "data.images_per_identity=1"]
    with pytest.raises(ValueError, match="synthetic has no named identities"):
        build_dataset(
            load_config(ExperimentConfig, None, [*synthetic, "data.exclude_identities=[a]"]), None
        )
    empty = load_config(ExperimentConfig, None, [*synthetic, "data.exclude_identities=[]"])
    assert len(build_dataset(empty, None)) == 2


# --- the key test: a real training run never loads a held-out face ------------------------
@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The identity folder of every image file the data layer decodes, in order."""
    seen: list[str] = []
    real = folder_module.read_rgb

    def recording(path, *args, **kwargs):
        seen.append(folder_module.Path(path).parent.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(folder_module, "read_rgb", recording)
    return seen


EVERYONE = {f"{i:05d}" for i in range(6)}


def test_training_and_teacher_cache_never_load_an_excluded_identity(tmp_path, faces, reads):
    dev = tmp_path / "dev.txt"
    dev.write_text("\n".join([*HELD_OUT, "someone_elsewhere"]) + "\n")
    cfg = _cfg(
        tmp_path,
        faces,
        f"data.exclude_identities={dev}",
        "teacher.model=iresnet18",
        "teacher.kwargs={width: 0.125, input_size: 32, num_features: 128}",
        f"teacher.cache={tmp_path / 'cache'}",
        "losses=[{name: embedding}]",
    )
    trainer = build_trainer(cfg)  # builds the teacher cache: reads every kept face
    assert set(reads) == EVERYONE - set(HELD_OUT) and len(reads) == 8
    reads.clear()
    assert len(trainer.fit()) == 3  # 3 steps of 4 over 8 kept faces: every one is drawn
    assert set(reads) == EVERYONE - set(HELD_OUT)
    assert trainer.distiller.head.weight.shape[0] == 4  # the classifier knows 4 people


def test_the_same_training_without_the_exclusion_loads_them(tmp_path, faces, reads):
    """The control: the check above can fail (3 steps of 4 over 12 faces draw everyone)."""
    assert len(build_trainer(_cfg(tmp_path, faces)).fit()) == 3
    assert set(reads) == EVERYONE


def test_select_neurons_cli_takes_the_same_list(tmp_path, faces, capsys):
    from facekd.cli import main

    argv = ["select-neurons", "--teacher", "mbf", "--data", str(faces), "--out", "x.json"]
    assert main([*argv, "--exclude-identities", str(tmp_path / "absent.txt")]) == 2
    assert "identity list file not found" in capsys.readouterr().err
