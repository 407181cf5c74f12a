"""The embedding-distillation benchmark's statistics (``benchmarks/embedding_kd_report.py``)
on hand-made decisions and embeddings: which seeds pair up, the per-seed deltas, the verdict's
rule (every seed ahead and a sign test p < 0.05), the cosine to the teacher."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import embedding_kd_report as ekd  # noqa: E402


def _decisions(rng, n, acc):
    return rng.random(n) < acc


def test_paired_tests_use_the_shared_seeds_and_the_verdict_rule():
    rng = np.random.default_rng(0)
    seeds = {"kt_emb128": [0, 1, 2], "kt_arcface": [0, 1, 2], "kt_emb16": [0]}
    decisions = {}
    for row, acc in (("kt_emb128", 0.95), ("kt_arcface", 0.80), ("kt_emb16", 0.80)):
        for k in seeds[row]:
            decisions[f"emb_{row}_seed{k}"] = {"lfw": _decisions(rng, 600, acc)}
    tests = {(t["a"], t["b"]): t for t in ekd.paired(seeds, decisions, ["lfw"], "emb_")}
    strong = tests[("kt_emb128", "kt_arcface")]
    assert strong["seeds"] == [0, 1, 2]
    a, b = decisions["emb_kt_emb128_seed1"]["lfw"], decisions["emb_kt_arcface_seed1"]["lfw"]
    assert strong["delta_points_per_seed"][1] == 100 * (a.mean() - b.mean())
    assert ekd.verdict(strong).startswith("**kt_emb128 beats kt_arcface on lfw**")
    weak = tests[("kt_emb16", "kt_arcface")]
    assert weak["seeds"] == [0]  # only the seed both rows trained at
    assert "does not separate from" in ekd.verdict(weak)  # same accuracy: no verdict either way
    assert ("kt_emb128_only", "kt_arcface") not in tests  # a row not trained is left out


def test_embedding_cosine_is_the_mean_row_cosine_to_the_teacher(tmp_path):
    rng = np.random.default_rng(1)
    teacher = rng.standard_normal((5, 8))
    student = teacher + 0.3 * rng.standard_normal((5, 8))
    (tmp_path / "emb").mkdir()
    np.savez(tmp_path / "emb" / "teacher@112.npz", lfw=teacher)
    np.savez(tmp_path / "emb" / "s.npz", lfw=3.0 * student)  # the scale does not matter
    want = np.mean(
        [
            s @ t / (np.linalg.norm(s) * np.linalg.norm(t))
            for s, t in zip(student, teacher, strict=True)
        ]
    )
    assert abs(ekd.embedding_cosine(tmp_path, "s") - want) < 1e-12


def test_every_row_has_a_valid_config_and_compared_rows_share_their_batches(tmp_path):
    import bench_embedding_kd as bench

    from facekd.config import ExperimentConfig, from_dict

    cfgs = {
        row: from_dict(ExperimentConfig, bench.row_config(row, 1, tmp_path, False, None))
        for row in bench.ROWS
    }
    for row, cfg in cfgs.items():
        assert cfg.train.seed == cfg.data.seed == 1 and row in ekd.LABELS
    for a, b in ekd.COMPARISONS:  # a paired test needs the same batches and schedule length
        # the same items in the same order; only the function-matching row views them anew,
        # and only the declared side pairs down-sample them to different sides
        same = {"augment": cfgs[b].data.augment, "student_size": cfgs[b].data.student_size}
        assert dataclasses.replace(cfgs[a].data, **same) == cfgs[b].data
        sides = cfgs[a].data.student_size != cfgs[b].data.student_size
        assert sides == ((a, b) in ekd.SIDE_PAIRS), (a, b)
        assert (cfgs[a].data.augment != cfgs[b].data.augment) == (a == "kt_emb_fm")
        assert cfgs[a].train.steps == cfgs[b].train.steps
        # precision too, unless the pair is declared a float32 / bf16 pair (said in the report)
        assert (cfgs[a].train.amp != cfgs[b].train.amp) == ((a, b) in ekd.PRECISION_PAIRS)
    assert cfgs["kt_emb_adamw_long"].train.steps > cfgs["kt_emb_adamw"].train.steps


def test_schedule_column_reads_the_runs_saved_config(tmp_path):
    run = tmp_path / "kt_emb_adamw_seed1"
    run.mkdir()
    cfg = {"train": {"optimizer": "adamw", "lr": 0.002, "steps": 800, "amp": "bf16"},
           "data": {"batch_size": 64}}  # fmt: skip
    (run / "config.yaml").write_text(__import__("yaml").safe_dump(cfg))
    assert ekd.schedule(tmp_path, "kt_emb_adamw", [1, 2]) == "adamw 0.002, 800 x 64, bf16"
    assert ekd.schedule(tmp_path, "teacher@112", None) == "-"


def test_schedule_of_a_student_trained_elsewhere_comes_from_its_config(tmp_path):
    import bench_embedding_kd as bench

    def config_of(row, seed):
        return bench.resolved_config(row, seed, tmp_path)

    # no run folder here (the student was trained on another machine): the row's own config
    assert ekd.schedule(tmp_path, "kt_emb_fm", [0], config_of) == "adamw 0.002, 2500 x 64, bf16"
    assert ekd.schedule(tmp_path, "scratch", [0], config_of) == "sgd 0.1, 300 x 32"


def test_students_of_another_teacher_are_compared_with_their_own(tmp_path):
    from facekd.models import build_backbone
    from facekd.models.checkpoints import save_backbone

    save_backbone(build_backbone("mbf", width=0.25, input_size=56), tmp_path / "kt_mbf_seed0.pt")
    save_backbone(build_backbone("mobilefacenet", width=0.25), tmp_path / "kt_seed0.pt")
    assert ekd.reference_of("kt_mbf_seed0", tmp_path) == "mbf@112"
    assert ekd.reference_of("kt_seed0", tmp_path) == "teacher@112"
    assert ekd.reference_of("mbf@56") == "mbf@112" and ekd.reference_of("teacher@40") == (
        "teacher@112"
    )
    assert ekd.label("mbf@112").endswith("112-px faces (reference)")
    assert "mbf teacher" in ekd.label("mbf@56") and "56-px" in ekd.label("mbf@56")
    assert ekd.label("kt_init_80") == "KT student before training (teacher weights at 80 px)"
    assert ekd.label("kt_init_ls1").startswith("KT student with the 7x7 last map")
    rng = np.random.default_rng(0)
    (tmp_path / "emb").mkdir()
    ref = rng.standard_normal((4, 8))
    np.savez(tmp_path / "emb" / "mbf@112.npz", lfw=ref)
    np.savez(tmp_path / "emb" / "s.npz", lfw=2.0 * ref)
    assert abs(ekd.embedding_cosine(tmp_path, "s", reference="mbf@112") - 1.0) < 1e-12


def test_cost_line_groups_rows_by_network_and_counts_the_last_stride(tmp_path):
    from facekd.models import build_backbone
    from facekd.models.checkpoints import save_backbone

    for row, kw in (("a", {}), ("b", {}), ("c", {"last_stride": 1})):
        model = build_backbone("mobilefacenet", width=0.25, input_size=56, **kw)
        save_backbone(model, tmp_path / f"emb_{row}_seed0.pt")
    line = ekd.student_gflops(ekd.first_students(tmp_path, "emb_", {r: [0] for r in "abc"}))
    plain, ls1 = line.split("; ")
    assert plain.endswith("GFLOPs (a, b)") and ls1.endswith("GFLOPs (c)") and "last_stride 1" in ls1
    flops = [float(part.split(" GFLOPs")[0].split()[-1]) for part in (plain, ls1)]
    assert 0 < flops[0] < flops[1]  # the 7x7 last map costs more than the 4x4 one


def test_report_names_the_students_sides(tmp_path):
    from facekd.models import build_backbone
    from facekd.models.checkpoints import save_backbone

    for row, side in (("a", 80), ("b", 56), ("c", 64), ("d", 56)):
        model = build_backbone("mobilefacenet", width=0.25, input_size=side)
        save_backbone(model, tmp_path / f"emb_{row}_seed1.pt")
    both56 = ekd.first_students(tmp_path, "emb_", {"b": [1], "d": [1]})
    assert ekd.student_sides(both56) == "56"
    every = ekd.first_students(tmp_path, "emb_", {r: [1] for r in "abcd"})
    assert ekd.student_sides(every) == "56, 64 and 80"
