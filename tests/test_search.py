"""Calibration (threshold at FAR against a brute-force count, sidecar, facekd.load / verify),
enrolment (templates, failures, resume) and search (CSV, open-set rejection, wrong model)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from facekd.cli import main
from facekd.data.synthetic import SyntheticFaces
from facekd.data.verification import write_bin
from facekd.deploy.api import DEFAULT_THRESHOLD, load
from facekd.evaluation.embed import extract_embeddings
from facekd.models.checkpoints import save_backbone
from facekd.search import Gallery, calibrate, calibration_record, read_calibration
from facekd.search.calibrate import labelled_scores
from tests.test_api import one_thread  # noqa: F401  (autouse: one torch thread)
from tests.test_export import calibrated_tiny

PEOPLE = {"ann": 2, "bob": 1, "cat": 3}


@pytest.fixture
def ckpt(tmp_path):
    return save_backbone(calibrated_tiny(), tmp_path / "m" / "student.pt")


@pytest.fixture
def people(tmp_path):
    """``people/<name>/<i>.png`` synthetic aligned crops, a broken photo, a person without any
    usable photo; returns (folder, {relative path: crop})."""
    src, faces, crops = tmp_path / "people", SyntheticFaces(4, 3, size=32, seed=3), {}
    for p, (name, n) in enumerate(PEOPLE.items()):
        (src / name).mkdir(parents=True)
        for i in range(n):
            crops[f"{name}/{i}.png"] = faces.render(p, i)[0]
            Image.fromarray(crops[f"{name}/{i}.png"]).save(src / name / f"{i}.png")
    (src / "ann" / "broken.jpg").write_bytes(os.urandom(300))
    (src / "dan").mkdir()
    (src / "dan" / "empty.png").write_bytes(b"")
    return src, crops


def test_calibration_record_matches_a_brute_force_count():
    rng = np.random.default_rng(0)
    gen, imp = rng.normal(0.6, 0.15, 300), rng.normal(0.0, 0.15, 5000)
    rec = calibration_record(gen, imp, far=1e-3, data="synthetic")
    t = rec["threshold"]
    assert (imp >= t).sum() <= 5 < (imp >= np.nextafter(t, -1)).sum()  # floor(1e-3 * 5000)
    assert rec["tar"] == (gen >= t).mean() and rec["far_measured"] == (imp >= t).mean()
    assert rec["far_resolved"] and not calibration_record(gen, imp[:500], 1e-3, "")["far_resolved"]
    for far, row in rec["tar_at_far"].items():
        assert (imp >= row["threshold"]).sum() <= int(float(far) * 5000 + 1e-9)


def test_labelled_scores_are_every_pair_once():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(7, 4))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    labels = np.array(list("aabbbcd"))
    gen, imp = labelled_scores(e, labels, block=3)
    ref_g = [e[i] @ e[j] for i in range(7) for j in range(i + 1, 7) if labels[i] == labels[j]]
    ref_i = [e[i] @ e[j] for i in range(7) for j in range(i + 1, 7) if labels[i] != labels[j]]
    np.testing.assert_allclose(np.sort(gen), np.sort(ref_g), atol=1e-6)
    np.testing.assert_allclose(np.sort(imp), np.sort(ref_i), atol=1e-6)


def test_calibrate_a_bin_stores_the_threshold_that_load_and_verify_use(ckpt, tmp_path, capsys):
    faces = SyntheticFaces(6, 2, size=32, seed=4)
    imgs, same = [], []
    for p in range(6):
        imgs += [faces.render(p, 0)[0], faces.render(p, 1)[0]]  # genuine pair
        imgs += [faces.render(p, 0)[0], faces.render((p + 1) % 6, 1)[0]]  # impostor pair
        same += [True, False]
    write_bin(tmp_path / "pairs.bin", imgs, same)
    assert load(ckpt).threshold_source.startswith("uncalibrated")
    assert main(["calibrate", "--model", str(ckpt), "--bin", str(tmp_path / "pairs.bin"),
                 "--far", "0.2"]) == 0  # fmt: skip
    assert "threshold" in capsys.readouterr().out
    # independent: the crops decoded from the .bin, embedded, cosines by hand
    from facekd.data.verification import read_bin

    ps = read_bin(tmp_path / "pairs.bin")
    e = extract_embeddings(load(ckpt).runner, ps.images, progress=False).astype(np.float64)
    cos = np.sum(e[ps.pairs[:, 0]] * e[ps.pairs[:, 1]], axis=1)
    rec = read_calibration(ckpt)
    imp = cos[~ps.issame]
    t = rec["threshold"]  # floor(0.2 * 6) = 1 impostor accepted (1e-9: summation order)
    assert (imp >= t + 1e-9).sum() <= 1 < (imp >= t - 1e-9).sum()
    assert rec["tar"] == pytest.approx((cos[ps.issame] >= rec["threshold"]).mean())
    model = load(ckpt)
    assert model.threshold == rec["threshold"] and "FAR 2e-01" in model.threshold_source
    assert load(ckpt, threshold=0.5).threshold == 0.5
    Image.fromarray(imgs[0]).save(tmp_path / "a.png")
    assert main(["verify", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--model",
                 str(ckpt)]) == 0  # fmt: skip
    assert f"threshold {rec['threshold']:.4f}, calibrated" in capsys.readouterr().out
    # other weights at the same path: the stale calibration is ignored, not trusted
    save_backbone(calibrated_tiny(seed=1), ckpt)
    assert read_calibration(ckpt) is None and load(ckpt).threshold == DEFAULT_THRESHOLD


def test_calibrate_keeps_the_export_sidecar_and_refuses_bad_input(ckpt, people, tmp_path):
    side = tmp_path / "m" / "student.pt.json"
    side.write_text(json.dumps({"format": "facekd.onnx/1", "opset": 17}))
    rec = calibrate(ckpt, far=0.25, folder=people[0], aligned=True)
    kept = json.loads(side.read_text())
    assert kept["opset"] == 17 and kept["calibration"]["threshold"] == rec["threshold"]
    assert rec["n_genuine"] == 1 + 3 and rec["n_impostor"] == 15 - 4  # 6 photos, 15 pairs
    assert set(rec["failed"]) == {"ann/broken.jpg", "dan/empty.png"}
    with pytest.raises(ValueError, match="exactly one"):
        calibrate(ckpt, folder=people[0], bin_path="x.bin")
    (tmp_path / "bad.bin").write_bytes(b"not a pickle")
    assert main(["calibrate", "--model", str(ckpt), "--bin", str(tmp_path / "bad.bin")]) == 2
    assert main(["calibrate", "--model", "mobilefacenet", "--folder", str(people[0])]) == 2


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_enroll_templates_failures_and_resume(ckpt, people, tmp_path, capsys):
    src, crops = people
    out = tmp_path / "gallery.npz"
    assert main(["enroll", str(src), "--model", str(ckpt), "--out", str(out), "--aligned",
                 "--workers", "0"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "enrolled 3 people (6 photos embedded, 0 reused, 2 failed" in printed
    assert "not enrolled (no usable photo): dan" in printed
    g = Gallery.load(out)
    assert g.identities.tolist() == ["ann", "bob", "cat"] and g.counts.tolist() == [2, 1, 3]
    runner = load(ckpt).runner
    for name, template in zip(g.identities, g.templates, strict=True):
        e = extract_embeddings(runner, [c for p, c in crops.items() if p.startswith(name)],
                               progress=False)  # fmt: skip
        mean = e.mean(0) / np.linalg.norm(e.mean(0))
        np.testing.assert_allclose(template, mean, atol=1e-5)
    failed = json.loads((tmp_path / "gallery.images.failed.json").read_text())["failed"]
    assert set(failed) == {"ann/broken.jpg", "dan/empty.png"}
    # rerun: nothing embedded again; a new person: only their photo
    Image.fromarray(crops["bob/0.png"][::-1].copy()).save(src / "eve.png")
    assert main(["enroll", str(src), "--model", str(ckpt), "--out", str(out), "--aligned"]) == 2
    assert "not in a person's folder" in capsys.readouterr().err
    (src / "eve").mkdir()
    os.replace(src / "eve.png", src / "eve" / "0.png")
    assert main(["enroll", str(src), "--model", str(ckpt), "--out", str(out), "--aligned",
                 "--workers", "0"]) == 0  # fmt: skip
    assert "enrolled 4 people (1 photos embedded, 6 reused" in capsys.readouterr().out
    empty = tmp_path / "nobody"
    empty.mkdir()
    assert main(["enroll", str(empty), "--model", str(ckpt), "--out", str(out)]) == 2


def test_search_csv_open_set_and_wrong_model(ckpt, people, tmp_path, capsys):
    src, crops = people
    gallery = tmp_path / "g.npz"
    assert main(["enroll", str(src), "--model", str(ckpt), "--out", str(gallery), "--aligned",
                 "--workers", "0"]) == 0  # fmt: skip
    probes = tmp_path / "probes"
    probes.mkdir()
    Image.fromarray(crops["bob/0.png"]).save(probes / "bob_again.png")  # bob's only photo
    Image.fromarray(SyntheticFaces(9, 1, size=32, seed=9).render(8, 0)[0]).save(probes / "x.png")
    out = tmp_path / "res.csv"
    args = ["search", str(probes), "--gallery", str(gallery), "--model", str(ckpt), "--out",
            str(out), "--aligned", "--top-k", "2", "--workers", "0"]  # fmt: skip
    assert main([*args, "--threshold", "0.999"]) == 0
    assert "2 faces (numpy): 1 accepted at threshold 0.9990 (given)" in capsys.readouterr().out
    rows = _rows(out)
    assert list(rows[0]) == ["path", "rank1_identity", "rank1_score", "accepted",
                             "rank2_identity", "rank2_score"]  # fmt: skip
    assert rows[0]["path"] == "bob_again.png" and rows[0]["rank1_identity"] == "bob"
    assert float(rows[0]["rank1_score"]) > 0.9999 and rows[0]["accepted"] == "True"
    g = Gallery.load(gallery)
    e = extract_embeddings(load(ckpt).runner, [np.array(Image.open(probes / "x.png"))],
                           progress=False)  # fmt: skip
    s = g.templates @ e[0]
    assert rows[1]["rank1_identity"] == g.identities[np.argmax(s)]
    assert float(rows[1]["rank1_score"]) == pytest.approx(s.max(), abs=1e-5)
    assert rows[1]["accepted"] == str(bool(s.max() >= 0.999))
    assert main([*args[:1], str(probes / "x.png"), *args[2:]]) == 0  # one image
    assert _rows(out)[0]["path"] == "x.png"
    # a calibrated 1:1 threshold: the search states its open-set false-accept bound
    from facekd.deploy.embed_folder import fingerprint
    from facekd.search import search
    from facekd.search.sidecar import write_calibration

    rec = {"threshold": 0.1, "far": 0.5, "far_measured": 0.5, "tar": 1.0}
    write_calibration(ckpt, rec | {"model_fingerprint": fingerprint(ckpt)})
    rep = search(probes, gallery, ckpt, out, aligned=True, workers=0, progress=False)
    assert rep.threshold == 0.1 and rep.fpir_bound == pytest.approx(1 - 0.5**3)
    assert main(args) == 0 and "accepts a stranger" in capsys.readouterr().out
    # a gallery enrolled with other weights is refused
    other = save_backbone(calibrated_tiny(seed=2), tmp_path / "other.pt")
    assert main([*args[:4], "--model", str(other), *args[6:]]) == 2
    assert "cannot be compared" in capsys.readouterr().err
