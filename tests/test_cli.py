"""CLI: profile writes a JSON report, user errors exit 2 without a traceback, -m entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from facekd.cli import main
from facekd.config import ExperimentConfig, from_dict
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
    from facekd.demo import DemoSize, run_demo, student_rows

    tiny = DemoSize(
        identities=8, labelled=4, images_per_identity=4, size=32, teacher_steps=2, steps=2,
        finetune_steps=2, batch=8, teacher_width=0.25, student_width=0.25, pairs=20,
        features=32, workers=0,
    )  # fmt: skip
    md = run_demo(tmp_path, size=tiny)
    report = json.loads((tmp_path / "report.json").read_text())
    names = [row["model"] for row in report["rows"]]
    assert names == ["teacher", *(name for name, _, _ in student_rows(tmp_path, tiny))]
    rows = {row["model"]: row for row in report["rows"]}
    for row in rows.values():
        assert row["compression"] > 0 and row["params_M"] > 0 and row["train_s"] > 0
    assert rows["hr_to_lr"]["input_px"] == rows["kt_only"]["input_px"] == 16
    # the students learn from labels for 4 of the 8 people; the teacher from all 8
    cfgs = {name: cfg for name, _, cfg in student_rows(tmp_path, tiny)}
    assert cfgs["scratch"]["data"]["labelled_identities"] == 4
    resolved = [from_dict(ExperimentConfig, cfg) for cfg in cfgs.values()]
    assert len({(c.train.seed, c.data.seed) for c in resolved}) == 1  # one start, one order
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
    assert "SYNTHETIC" in text and "## What this run shows" in text
    assert "Each method against its no-teacher baseline" in text
    # each verdict quotes this run's numbers for the method and for its baseline
    for name, ref in (
        ("hinton", "scratch"),
        ("hr_to_lr", "kt_only"),
        ("triplet_ft", "triplet_fixed"),
    ):
        line = next(x for x in text.splitlines() if x.startswith(f"- **{name}**"))
        acc, base = rows[name]["synthetic_acc"], rows[ref]["synthetic_acc"]
        assert f"{ref} at {rows[name]['input_px']} px: {acc:.4f} vs {base:.4f}" in line
    assert len(report["verdicts"]) == 5 and report["summary"].startswith("The teacher learnt 8")
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    assert (tmp_path / "roc_synthetic.png").exists()


def _row(model, acc, std=0.01, px=32, **extra):
    return {"model": model, "input_px": px, "synthetic_acc": acc, "synthetic_std": std,
            f"synthetic_acc@{px // 2}": acc - 0.05, **extra}  # fmt: skip


def test_demo_verdicts_are_derived_from_the_runs_numbers():
    from facekd.demo import DemoSize, method_verdicts, setting_paragraph

    rows = [
        _row("teacher", 0.95, **{"synthetic_acc@16": 0.90}),
        _row("scratch", 0.80, std=0.02),
        _row("scratch_labelled", 0.82),
        _row("hinton", 0.85),  # +0.05 > band 0.02: beats
        _row("embedding", 0.81),  # +0.01 within 0.02: ties
        _row("neuron_selection", 0.70),  # -0.10: loses
        _row("kt_only", 0.84, px=16),
        _row("hr_to_lr", 0.88, px=16),
        _row("triplet_fixed", 0.80),
        _row("triplet_ft", 0.805, std=0.001),
    ]
    logs = {"hinton": [{"kd/hinton": 2.0}, {"kd/hinton": 0.5}]}
    hinton, emb, ns, hr, tri = method_verdicts(rows, logs)
    assert hinton == (
        "**hinton** beats scratch at 32 px: 0.8500 vs 0.8000 (+0.0500; tie band 0.0200); it "
        "recovers 33% of the teacher's +0.1500 lead; kd/hinton 2 -> 0.5."
    )
    assert emb.startswith("**embedding** ties scratch at 32 px: 0.8100 vs 0.8000 (+0.0100")
    assert ns.startswith("**neuron_selection** loses to scratch at 32 px: 0.7000 vs 0.8000")
    # the 16-px pair is judged at 16 px against the teacher fed 16-px faces (0.90)
    assert hr.startswith("**hr_to_lr** beats kt_only at 16 px: 0.8800 vs 0.8400 (+0.0400")
    assert "recovers 67% of the teacher's +0.0600 lead" in hr
    assert tri.startswith("**triplet_ft** ties triplet_fixed") and "band 0.0100" in tri
    text = setting_paragraph(rows, DemoSize(identities=160, labelled=16, images_per_identity=12))
    assert "scores 0.9500 on held-out people" in text and "the teacher is +0.1300 ahead" in text
    assert "2 method(s) beat their no-teacher baseline" in text and "(hinton, hr_to_lr)" in text


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
