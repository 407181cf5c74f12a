"""MXNet RecordIO without mxnet: the real InsightFace-style sample, an independently written
file in the published format, writer round trips, DataLoader workers and corruption errors."""

from __future__ import annotations

import pickle
import struct

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facekd.data import recordio
from facekd.data.batching import collate_batch
from facekd.data.recordio import (
    RecordIODataset,
    RecordIOError,
    RecordIOReader,
    RecordIOWriter,
    unpack_record,
    write_property,
)
from facekd.data.transforms import to_tensor
from tests.conftest import shared_path

MAGIC = 0xCED7230A


# --- an independent writer, straight from dmlc-core recordio.h and mx.recordio.pack ----------
def _ref_record(payload: bytes) -> bytes:
    """dmlc RecordIOWriter::WriteRecord: split at 4-byte aligned magics, pad parts to 4."""
    magic = struct.pack("<I", MAGIC)
    cuts = [i for i in range(0, len(payload) // 4 * 4, 4) if payload[i : i + 4] == magic]
    out, begin = b"", 0
    for n, i in enumerate(cuts):
        out += struct.pack("<II", MAGIC, ((1 if n == 0 else 2) << 29) | (i - begin))
        out += payload[begin:i]
        begin = i + 4
    tail = payload[begin:]
    out += struct.pack("<II", MAGIC, ((3 if cuts else 0) << 29) | len(tail)) + tail
    return out + b"\0" * ((4 - len(tail) % 4) % 4)


def _ref_pack(label, data: bytes, id_: int) -> bytes:
    if isinstance(label, (list, tuple)):
        return (
            struct.pack("<IfQQ", len(label), 0.0, id_, 0)
            + struct.pack(f"<{len(label)}f", *label)
            + data
        )
    return struct.pack("<IfQQ", 0, float(label), id_, 0) + data


def _ref_write(folder, records: dict[int, bytes]) -> None:
    rec, idx = b"", ""
    for key, payload in records.items():
        idx += f"{key}\t{len(rec)}\n"
        rec += _ref_record(payload)
    (folder / "train.rec").write_bytes(rec)
    (folder / "train.idx").write_text(idx)


def _png(seed: int, size: int = 12) -> tuple[np.ndarray, bytes]:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return rgb, cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def _insightface_set(folder, labels=(0, 0, 1, 1, 1)):
    """Header record, images 1..N (one with an array label), identity records: face2rec2."""
    n = len(labels)
    images = [_png(i) for i in range(n)]
    runs = sorted(
        {lab: [labels.index(lab) + 1, n - labels[::-1].index(lab) + 1] for lab in labels}.items()
    )
    records = {0: _ref_pack([n + 1.0, n + 1.0 + len(runs)], b"", 0)}
    for key, (lab, (_, data)) in enumerate(zip(labels, images, strict=True), 1):
        records[key] = _ref_pack([float(lab), 7.0] if key == 2 else lab, data, key)
    for j, (_, (a, b)) in enumerate(runs):
        records[n + 1 + j] = _ref_pack([float(a), float(b)], b"", n + 1 + j)
    _ref_write(folder, records)
    return [rgb for rgb, _ in images]


# --- the real file ------------------------------------------------------------------------
def test_real_sample_bytes_and_labels_match_sources():
    root = shared_path("recordio-sample")
    lst = [line.split("\t") for line in (root / "train.lst").read_text().splitlines()]
    reader = RecordIOReader(root / "train.rec")
    for key, label, rel in lst:
        header, data = unpack_record(reader.read(int(key)))
        assert data == (root / "faces_webface_112x112" / rel).read_bytes()
        assert header.flag == 0 and header.label == float(label)
    ds = RecordIODataset(root)
    assert ds.header_range is None and len(ds) == 8  # record 0 is an ordinary image
    by_key = {int(k): int(lab) for k, lab, _ in lst}
    assert ds.labels.tolist() == [by_key[int(k)] for k in ds.keys]
    item = ds[3]
    assert item["image"].shape == (3, 112, 112) and item["index"] == 3
    assert item["label"] == by_key[int(ds.keys[3])]


# --- the published format, written independently ------------------------------------------
def test_independent_insightface_layout_reads_back(tmp_path):
    images = _insightface_set(tmp_path)
    ds = RecordIODataset(tmp_path)
    assert ds.header_range == (6, 8) and len(ds) == 5 and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]
    for i, rgb in enumerate(images):
        item = ds[i]
        assert torch.equal(item["image"], to_tensor(rgb))
        assert (item["label"], item["index"]) == (ds.labels[i], i)


def test_multipart_record_with_magic_inside_is_joined(tmp_path):
    payload = _ref_pack(3, b"abcd" + struct.pack("<I", MAGIC) * 2 + b"xyz", 1)
    assert len(payload) % 4 == 3  # magics at aligned offsets 28, 32 -> three parts
    _ref_write(tmp_path, {1: payload, 2: _ref_pack(4, b"next", 2)})
    reader = RecordIOReader(tmp_path / "train.rec")
    assert reader.read(1) == payload and reader.read(2)[-4:] == b"next"
    assert recordio.encode_record(payload) == _ref_record(payload)
    assert reader.read_header(1).label == 3.0


# --- our writer ---------------------------------------------------------------------------
@pytest.mark.parametrize("header", [False, True])
def test_writer_round_trip_and_matches_reference_bytes(tmp_path, header):
    labels = [0, 0, 1, 2, 2, 2]
    pngs = [_png(10 + i) for i in range(len(labels))]
    with RecordIOWriter(tmp_path / "train.rec", header=header) as w:
        keys = [w.write(data, lab) for (_, data), lab in zip(pngs, labels, strict=True)]
    ds = RecordIODataset(tmp_path)
    assert ds.labels.tolist() == labels and ds.num_classes == 3
    for i, (rgb, _) in enumerate(pngs):
        assert torch.equal(ds[i]["image"], to_tensor(rgb))
    if header:
        assert keys == [1, 2, 3, 4, 5, 6] and ds.header_range == (7, 10)
        ref = tmp_path / "ref"
        ref.mkdir()
        _ref_write(
            ref,
            {
                0: _ref_pack([7.0, 10.0], b"", 0),
                **{
                    k: _ref_pack(lab, d, k)
                    for k, (_, d), lab in zip(keys, pngs, labels, strict=True)
                },
                7: _ref_pack([1.0, 3.0], b"", 7),
                8: _ref_pack([3.0, 4.0], b"", 8),
                9: _ref_pack([4.0, 7.0], b"", 9),
            },
        )
        assert (tmp_path / "train.rec").read_bytes() == (ref / "train.rec").read_bytes()
        assert (tmp_path / "train.idx").read_text() == (ref / "train.idx").read_text()
    else:
        assert keys == list(range(6)) and ds.header_range is None


def test_writer_encodes_arrays_and_requires_sorted_labels_with_header(tmp_path):
    rgb = np.full((16, 16, 3), (200, 30, 90), dtype=np.uint8)  # flat colour survives JPEG
    with RecordIOWriter(tmp_path / "a.rec") as w:
        w.write(rgb, 4)
    item = RecordIODataset(tmp_path / "a.rec")[0]
    assert (item["image"] - to_tensor(rgb)).abs().max() < 0.05 and item["label"] == 4
    with (
        pytest.raises(ValueError, match="sorted by label"),
        RecordIOWriter(tmp_path / "b.rec", header=True) as w,
    ):
        w.write(b"x", 1)
        w.write(b"x", 0)


def test_transform_dict_gives_teacher_view_and_labels_skip_decoding(tmp_path, monkeypatch):
    _insightface_set(tmp_path)

    def paired(img):
        return {"image": cv2.resize(img, (6, 6)), "teacher_image": img}

    ds = RecordIODataset(tmp_path, transform=paired)
    batch = collate_batch([ds[0], ds[1]])
    assert batch.images.shape == (2, 3, 6, 6) and batch.teacher_images.shape == (2, 3, 12, 12)

    def no_decoding(_):
        raise AssertionError("labels must not decode images")

    monkeypatch.setattr(recordio, "read_rgb", no_decoding)
    assert RecordIODataset(tmp_path).labels.tolist() == [0, 0, 1, 1, 1]


def test_dataloader_two_workers_yields_every_index_once(tmp_path):
    images = _insightface_set(tmp_path, labels=tuple(i // 3 for i in range(11)))
    ds = RecordIODataset(tmp_path)
    ds[0]  # open the file in the parent first: workers must not reuse this handle
    pickle.loads(pickle.dumps(ds))[1]  # the handle is dropped when pickling (spawn)
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_batch)
    seen = []
    for batch in loader:
        for j, i in enumerate(batch.index.tolist()):
            assert torch.equal(batch.images[j], to_tensor(images[i]))
        seen += batch.index.tolist()
    assert sorted(seen) == list(range(11))


def test_each_process_opens_its_own_handle(tmp_path, monkeypatch):
    _insightface_set(tmp_path)
    reader = RecordIOReader(tmp_path / "train.rec")
    reader.read(1)
    parent_file = reader._file
    monkeypatch.setattr(recordio.os, "getpid", lambda: -7)  # as seen from a forked worker
    assert reader.read(1) == RecordIOReader(tmp_path / "train.rec").read(1)
    assert reader._file is not parent_file and not parent_file.closed  # the parent keeps its own


# --- errors -------------------------------------------------------------------------------
def test_missing_index_is_a_clear_error(tmp_path):
    _insightface_set(tmp_path)
    (tmp_path / "train.idx").unlink()
    with pytest.raises(FileNotFoundError, match="train.idx"):
        RecordIODataset(tmp_path)


def test_bad_magic_names_file_and_offset(tmp_path):
    _insightface_set(tmp_path)
    offset = RecordIOReader(tmp_path / "train.rec").offset(3)
    data = bytearray((tmp_path / "train.rec").read_bytes())
    data[offset] ^= 0xFF
    (tmp_path / "train.rec").write_bytes(bytes(data))
    ds = RecordIODataset(tmp_path)
    with pytest.raises(RecordIOError, match=rf"bad magic .* at offset {offset} in .*train\.rec"):
        ds[2]  # item 2 is key 3


def test_truncated_file_names_file_and_offset(tmp_path):
    _insightface_set(tmp_path)
    rec = tmp_path / "train.rec"
    offset = RecordIOReader(rec).offset(5)
    rec.write_bytes(rec.read_bytes()[: offset + 20])
    with pytest.raises(RecordIOError, match=rf"truncated record at offset {offset} in .*train"):
        RecordIODataset(tmp_path)[4]


def test_label_out_of_range_against_property(tmp_path):
    _insightface_set(tmp_path)
    write_property(tmp_path, num_classes=1)
    ds = RecordIODataset(tmp_path)
    assert ds.num_classes == 1 and ds.image_size == (112, 112)
    ds[0]
    with pytest.raises(RecordIOError, match=r"label 1\.0 .*key 3.* out of range.*\[0, 1\)"):
        ds[2]
    with pytest.raises(RecordIOError, match="out of range"):
        _ = ds.labels
