"""CLI: profile writes a JSON report, user errors exit 2 without a traceback, -m entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from facekd.cli import main
from facekd.data.synthetic import synthetic_pairset
from facekd.evaluation.embed import extract_embeddings
from facekd.evaluation.verification import THRESHOLD_SEARCH, verify
from facekd.models import BACKBONES, build_backbone
from facekd.models.checkpoints import load_backbone

TINY = ["--batch-sizes", "1", "2", "--warmup", "1", "--runs", "2", "--min-runs", "1"]


def test_profile_writes_json(tmp_path, capsys):
    out = tmp_path / "sub" / "profile.json"
    argv = ["profile", "--teacher", "iresnet18", "--student", "mobilefacenet"]
    argv += ["--teacher-size", "32", "--student-size", "32", *TINY, "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["teacher"]["name"] == "iresnet18" and data["student"]["name"] == "mobilefacenet"
    assert data["teacher"]["input_size"] == 32 and data["compression_ratio"] > 1
    assert len(data["speedup"]) == 4 and data["environment"]["threads"] >= 1
    assert "compression" in capsys.readouterr().out


def test_profile_accepts_checkpoint_file(tmp_path):
    from facekd.models.checkpoints import save_backbone

    path = tmp_path / "student.pt"
    save_backbone(build_backbone("mobilefacenet", width=0.25, input_size=32), path)
    out = tmp_path / "p.json"
    argv = ["profile", "--teacher", "mobilefacenet", "--teacher-size", "32"]
    argv += ["--student", str(path), "--precisions", "fp32", *TINY, "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["student"]["name"] == str(path) and data["student"]["input_size"] == 32
    assert data["compression_ratio"] > 1  # width 0.25 student vs full-width teacher


def test_tiny_demo_trains_evaluates_and_reports(tmp_path):
    from facekd.demo import DemoSize, run_demo

    tiny = DemoSize(
        identities=8,
        images_per_identity=4,
        size=32,
        steps=2,
        batch=8,
        teacher_width=0.125,
        student_width=0.25,
        pairs=20,
    )
    md = run_demo(tmp_path, size=tiny)
    report = json.loads((tmp_path / "report.json").read_text())
    names = [row["model"] for row in report["rows"]]
    assert names == ["teacher", "scratch", "hinton", "neuron_selection", "hr_to_lr", "triplet"]
    rows = {row["model"]: row for row in report["rows"]}
    for row in rows.values():
        assert row["compression"] > 0 and row["params_M"] > 0 and row["train_s"] > 0
    assert rows["hr_to_lr"]["input_px"] == 16, "the HR->LR student works at half resolution"
    # every accuracy is what the named threshold search gives on the saved model's embeddings
    assert report["threshold_search"]["synthetic_acc"] == THRESHOLD_SEARCH["grid"]
    assert report["threshold_search"]["synthetic_acc_exact"] == THRESHOLD_SEARCH["exact"]
    pairs = synthetic_pairset(tiny.pairs, size=tiny.size, seed=0)
    for name in ("teacher", "scratch"):
        emb = extract_embeddings(load_backbone(tmp_path / name / "student.pt"), pairs.images)
        both = (emb[pairs.pairs[:, 0]], emb[pairs.pairs[:, 1]])
        for key, search in (("synthetic_acc", "grid"), ("synthetic_acc_exact", "exact")):
            res = verify(both, pairs.issame, thresholds=search)
            assert rows[name][key] == pytest.approx(res.accuracy, abs=1e-9), (name, key)
    text = md.read_text()
    assert "SYNTHETIC" in text and "Face methods against the from-scratch student" in text
    assert "synthetic (grid)" in text and "synthetic (exact)" in text
    # each verdict quotes this run's numbers (grid accuracies) for the method and for scratch
    for name in ("hinton", "neuron_selection", "triplet"):
        line = next(x for x in text.splitlines() if x.startswith(f"- **{name}**"))
        acc, ref = rows[name]["synthetic_acc"], rows["scratch"]["synthetic_acc"]
        assert f"{acc:.4f} vs {ref:.4f}" in line
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    assert (tmp_path / "roc_synthetic.png").exists()


def _verdict_rows(teacher_acc: float, hr_gflops: float) -> list[dict]:
    def row(model, acc, px=32, gflops=0.03, low=None):
        return {"model": model, "input_px": px, "synthetic_acc": acc, "synthetic_std": 0.01,
                "synthetic_acc@16": acc if low is None else low, "gflops": gflops,
                "latency_b1_ms": 10 * gflops}  # fmt: skip

    return [
        row("teacher", teacher_acc, low=teacher_acc - 0.05),
        row("scratch", 0.90, low=0.88),
        row("neuron_selection", 0.86),
        row("hr_to_lr", 0.80, px=16, gflops=hr_gflops),
        row("triplet", 0.85),
    ]


def test_demo_verdicts_are_derived_from_the_runs_numbers():
    from facekd.demo import DemoSize, face_method_verdicts

    s = DemoSize(identities=80, batch=64, size=32)
    logs = {
        "neuron_selection": [{"kd/neuron_selection": 2.0}, {"kd/neuron_selection": 0.5}],
        "triplet": [{"ce": 9.0, "kd/triplet_distillation": 0.2}, {"ce": 8.0}],
    }
    runs = {"triplet": {"data": {"sampler": "pk", "p": 16, "k": 4}}}
    weak = face_method_verdicts(_verdict_rows(0.905, 0.01), s, logs, runs)
    strong = face_method_verdicts(_verdict_rows(0.99, 0.015), s, logs, runs)
    ns_weak, hr_weak, tri_weak = weak
    ns_strong, hr_strong, _ = strong
    assert ns_weak.startswith("**neuron_selection** loses to scratch at 32 px: 0.8600 vs 0.9000")
    assert "teacher it learns from scores 0.9050" in ns_weak and "0.9900" not in ns_weak
    assert "teacher scores 0.9900 (+0.0900 over scratch)" in ns_strong
    assert "no identity (ce) term" in ns_weak and "no identity (ce) term" not in tri_weak
    assert "kd/neuron_selection went from 2 to 0.5 over training (25% of its start)" in ns_weak
    # the HR->LR student is compared at its own 16 px, with the FLOPs ratio of its rows
    assert "at 16 px: 0.8000 vs 0.8800" in hr_weak
    assert "3.0x fewer FLOPs" in hr_weak and "2.0x fewer FLOPs" in hr_strong
    assert "costs even the teacher 0.0500" in hr_weak
    assert "16 identities x 4 images" in tri_weak and "up to 64 of the 80" in tri_weak
    tie = _verdict_rows(0.99, 0.01)
    tie[2]["synthetic_acc"] = 0.905
    assert "ties scratch" in face_method_verdicts(tie, s)[0]
    tie[2]["synthetic_acc"] = 0.93
    assert face_method_verdicts(tie, s)[0].endswith(
        "beats scratch at 32 px: 0.9300 vs 0.9000 (+0.0300)."
    )


def test_train_command_resumes_and_rejects_bad_configs(tmp_path, capsys):
    argv = [
        "train",
        "--set",
        f"out_dir={tmp_path}",
        "--set",
        "data.identities=4",
        "--set",
        "data.images_per_identity=4",
        "--set",
        "data.image_size=32",
        "--set",
        "data.batch_size=8",
        "--set",
        "data.workers=0",
        "--set",
        "student.kwargs={width: 0.25}",
        "--set",
        "train.progress=false",
    ]
    assert main([*argv, "--set", "train.steps=1"]) == 0
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "student.pt").exists()
    capsys.readouterr()
    assert main([*argv, "--set", "train.steps=2"]) == 2  # a changed training key is refused
    err = capsys.readouterr().err
    assert "train.steps: 1 -> 2" in err and "--extend-steps" in err
    assert main([*argv, "--set", "train.steps=2", "--extend-steps"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert main(["train", "--set", "train.stpes=3"]) == 2
    assert "unknown key(s) ['stpes'] in train" in capsys.readouterr().err
    assert main(["align", str(tmp_path / "absent"), str(tmp_path / "out")]) == 2


def test_unknown_backbone_exits_2_with_valid_names(capsys):
    assert main(["profile", "--teacher", "resnet9000", *TINY]) == 2
    err = capsys.readouterr().err
    assert "resnet9000" in err and "Traceback" not in err
    assert all(name in err for name in BACKBONES)


@pytest.mark.parametrize(
    "argv",
    [
        [
            "profile",
            "--teacher",
            "mbf",
            "--student-size",
            "8",
        ],  # below the model's minimum input size
        ["profile", "--teacher-size", "abc"],
        ["profile", "--batch-sizes", "0"],
        ["profile", "--precisions", "fp16"],
        ["no-such-command"],
        [],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_python_dash_m_help():
    result = subprocess.run(
        [sys.executable, "-m", "facekd", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "profile" in result.stdout and "demo" in result.stdout


def test_bench_reports_accuracy_low_res_compression_and_speedup(tmp_path):
    from facekd.data.synthetic import synthetic_pairset
    from facekd.data.verification import write_bin
    from facekd.models import build_backbone
    from facekd.models.checkpoints import save_backbone

    ps = synthetic_pairset(20, num_identities=6, images_per_identity=3, size=32)
    images = ps.pair_images()
    write_bin(tmp_path / "syn.bin", images, ps.issame)
    teacher = save_backbone(
        build_backbone("iresnet18", width=0.125, input_size=32), tmp_path / "t.pt"
    )
    student = save_backbone(
        build_backbone("mobilefacenet", width=0.25, input_size=32), tmp_path / "s.pt"
    )
    argv = [
        "bench",
        "--teacher",
        str(teacher),
        "--student",
        str(student),
        "--bin",
        str(tmp_path / "syn.bin"),
    ]
    assert main([*argv, "--low-res", "16", "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["teacher", "student"]
    assert {"syn_acc", "syn_acc@16", "compression", "speedup_b1_fp32"} <= set(rows[1])
    assert rows[1]["compression"] > 1
    assert (tmp_path / "out" / "roc_syn.png").exists()
    assert main(["bench", "--teacher", "mbf", "--student", "mbf"]) == 2
