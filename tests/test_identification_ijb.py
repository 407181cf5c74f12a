"""IJB 1:N: the list reader, CMC / TPIR@FPIR on templates pooled by hand, and `facekd bench
--ijb` for a low-resolution student (it used to fail: tensors cannot be resized)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facekd.data.ijb import IJBDataset, ijb_1n_files, load_ijb, read_1n_list
from facekd.evaluation.bench import _ijb_row
from facekd.evaluation.embed import extract_embeddings
from facekd.evaluation.identification import tpir_at_fpir
from facekd.evaluation.ijb import evaluate_ijb
from facekd.evaluation.ijb_1n import evaluate_ijb_1n
from tests.test_export import calibrated_tiny
from tests.test_ijb_data import _write_fixture

HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID\n"


def test_read_1n_list_one_row_per_template_and_errors(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text(HEADER + "5,50,img/1.jpg,1\n5,50,img/2.jpg,2\n\n3,30,img/3.jpg,3\n")
    t, s = read_1n_list(f)
    assert t.tolist() == [5, 3] and s.tolist() == [50, 30] and t.dtype == np.int64
    f.write_text(HEADER + "5,50,a.jpg\n5,51,b.jpg\n")
    with pytest.raises(ValueError, match=r"g\.csv:3: template 5 listed with subjects 50 and 51"):
        read_1n_list(f)
    f.write_text(HEADER + "5,x,a.jpg\n")
    with pytest.raises(ValueError, match=r"g\.csv:2: expected a number"):
        read_1n_list(f)
    f.write_text(HEADER)
    with pytest.raises(ValueError, match="no templates"):
        read_1n_list(f)


def test_1n_metrics_against_templates_pooled_by_hand():
    rng = np.random.default_rng(0)
    # templates 1..4 in the galleries (subjects 10, 20 | 30, 40), probes 5..9; two images each
    tids = np.repeat(np.arange(1, 10), 2)
    feats = rng.normal(size=(18, 8))
    feats[8:10] += 3 * feats[0]  # probe 5 looks like gallery template 1 (subject 10)
    galleries = {"G1": (np.array([1, 2]), np.array([10, 20])),
                 "G2": (np.array([3, 4]), np.array([30, 40]))}  # fmt: skip
    probes = (np.arange(5, 10), np.array([10, 20, 30, 40, 10]))
    res = evaluate_ijb_1n(feats, tids, np.arange(18), np.ones(18), galleries, probes, (0.5,))
    # by hand: one image per media, faceness 1 -> template = normalize(sum of its two images)
    tmpl = feats.reshape(9, 2, 8).sum(1)
    tmpl /= np.linalg.norm(tmpl, axis=1, keepdims=True)
    s = tmpl[4:] @ tmpl[:4].T  # (5 probes, 4 gallery templates)
    mate = np.array([0, 1, 2, 3, 0])
    assert res["cmc"][1] == pytest.approx(np.mean(s.argmax(1) == mate))
    assert res["cmc"][1] >= 0.2  # probe 5 is found at rank 1
    assert res["cmc"][10] == 1.0
    g1 = tpir_at_fpir(s[:, :2], probes[1], [10, 20], (0.5,))
    g2 = tpir_at_fpir(s[:, 2:], probes[1], [30, 40], (0.5,))
    assert res["open_set"]["G1"][0.5]["tpir"] == pytest.approx(g1[0.5]["tpir"])
    assert res["tpir@fpir"][0.5] == pytest.approx((g1[0.5]["tpir"] + g2[0.5]["tpir"]) / 2)
    with pytest.raises(ValueError, match="in neither gallery"):
        evaluate_ijb_1n(feats, tids, np.arange(18), np.ones(18), galleries,
                        (probes[0], np.array([10, 20, 30, 40, 99])))  # fmt: skip


IMAGES = [  # name, template, media, placement, faceness: one image per template
    (f"{t}.jpg", t, 100 + t, (1.2 + 0.1 * t, 0.05 * t, 20.0 + 3 * t, 15.0 + 2 * t), 0.9)
    for t in range(1, 7)
]


def test_bench_ijb_runs_a_low_resolution_student_with_1n(tmp_path):
    torch.set_num_threads(1)
    _write_fixture(tmp_path, images=IMAGES, pairs=[(1, 5, 1), (2, 5, 0), (3, 6, 1), (4, 6, 0)])
    meta = tmp_path / "meta"
    (meta / "ijbc_1N_gallery_G1.csv").write_text(HEADER + "1,10,1.jpg,1\n2,20,2.jpg,1\n")
    (meta / "ijbc_1N_gallery_G2.csv").write_text(HEADER + "3,30,3.jpg,1\n4,40,4.jpg,1\n")
    (meta / "ijbc_1N_probe_mixed.csv").write_text(HEADER + "5,10,5.jpg,1\n6,30,6.jpg,1\n")
    assert ijb_1n_files(tmp_path) is not None and ijb_1n_files(tmp_path, "IJBB") is None
    student = calibrated_tiny()  # input_size 32: the 112-px IJB crops must be resized
    assert student.input_size == 32
    row = _ijb_row(student, str(tmp_path), "IJBC")
    # independent: the aligned crops, resized by the one embedding path, pooled by evaluate_ijb
    ds = IJBDataset(load_ijb(tmp_path))
    m = ds.meta
    f = extract_embeddings(student, [ds.aligned(i) for i in range(len(ds))], normalize=False,
                           progress=False)  # fmt: skip
    ref = evaluate_ijb(f, m.tids, m.mids, m.t1, m.t2, m.label, m.scores)
    assert row["IJBC_tar@0.1"] == ref.tar_at_far[0.1]
    u = f / np.linalg.norm(f, axis=1, keepdims=True)  # single-image templates
    s = u[4:] @ u[:4].T
    assert row["IJBC_1N_rank1"] == np.mean(s.argmax(1) == np.array([0, 2]))
    assert set(row) >= {"IJBC_1N_tpir@0.01", "IJBC_1N_tpir@0.1"}
