"""CPU speed: facekd's default embedding and training paths against a plain torch loop.

Every timing runs in a fresh Python process (``--child``), so no variant inherits another's
allocator state, threads or warm caches; the parent only orders the runs (variants
interleaved, ``--repeats`` rounds), collects the results and writes the report.

Embedding (``--images`` held-out LFW-mini crops, default 1,024: the first distinct images of
the aligned ``.bin`` that ``bench_lfw_legacy.py`` builds; the real legacy InsightFace
MobileFaceNet, 112 px, flip-sum, batch 64; model loading and JPEG decoding are not timed):

* ``plain``: the insightface-style loop (``eval/verification.py``): per batch of 64 uint8
  crops, ``(x / 255 - 0.5) / 0.5``, ``f(x) + f(flip(x))`` as two forwards under
  ``torch.no_grad()``, L2-normalised; fp32, torch's default threads, glibc's default malloc.
* ``facekd``: ``extract_embeddings(model, crops)`` with its defaults (fp32): the runtime tuned
  by ``facekd.runtime.tune_cpu`` (allocator + threads) and the channels-last layout.
* ``facekd_contiguous``: the same with ``channels_last=False`` (what the allocator alone gives).
* ``facekd_untuned``: the defaults with ``FACEKD_CPU_TUNING=0`` (what the layout alone gives).
* ``facekd_bf16``: the defaults with ``bf16=True`` (explicit option).

Embeddings of every variant are compared with ``plain``'s (cosine per face, minimum reported).

Training step (MobileFaceNet from scratch, 112 px, batch 64, ArcFace head over 1,000
classes, SGD with momentum; ``--train-steps`` timed after 2 warm-up steps; random faces):
``train_plain`` (a hand-written loop: forward, head, cross-entropy, backward, step; untuned),
``train_facekd`` (``Distiller`` step after ``tune_cpu``) and ``train_facekd_cl`` (the same in
channels-last).

Layout per architecture (``--layout-archs``, random weights, ``--layout-images`` random crops
after one warm-up batch, tuned runtime): ``extract_embeddings`` with ``channels_last=False``
(the module as given) vs ``True`` (the inference copy: BatchNorm folded, channels-last); this
is what ``facekd.evaluation.embed.CHANNELS_LAST_CPU`` is based on.

LFW-mini accuracy (all 1,200 pairs, 2 official folds, insightface grid thresholds): fp32
against bf16, both through ``extract_embeddings``' defaults.

Writes ``benchmarks/results/cpu_speed.json`` and ``.md``. Exits 0 with a message when
``../shared/data`` is absent.

    .venv/bin/python benchmarks/bench_lfw_legacy.py      # builds outputs/lfw_mini.bin once
    .venv/bin/python benchmarks/bench_cpu_speed.py [--repeats 3] [--quick]
    .venv/bin/python benchmarks/bench_cpu_speed.py --render   # rewrite the .md from the .json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LFW = DATA / "lfw-mini"
MODEL = DATA / "insightface-mobilefacenet-legacy" / "model"
RESULTS = ROOT / "benchmarks" / "results"
EMBED = ("plain", "facekd", "facekd_contiguous", "facekd_untuned", "facekd_bf16")
TRAIN = ("train_plain", "train_facekd", "train_facekd_cl")
BATCH = 64
TRAIN_CLASSES = 1000
UNTUNED = {"FACEKD_CPU_TUNING": "0"}  # variants that must run on the machine's defaults


# ---------------------------------------------------------------- children (one per process)
def _crops(bin_path: str, n: int) -> list:
    from facekd.data.transforms import read_rgb
    from facekd.data.verification import read_bin

    images = read_bin(bin_path).images[:n]
    return [read_rgb(bytes(b)) for b in images]


def plain_embed(model, crops, batch: int = BATCH):
    """The insightface-style test loop (see the module docstring)."""
    import numpy as np
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(crops), batch):
            img = torch.from_numpy(np.stack(crops[s : s + batch])).permute(0, 3, 1, 2).float()
            img = (img / 255 - 0.5) / 0.5
            feat = model(img) + model(torch.flip(img, dims=[3]))
            out.append(torch.nn.functional.normalize(feat).numpy())
    return np.concatenate(out)


def _cpu_times() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _timed(fn) -> tuple[object, dict]:
    import torch

    u0, s0 = _cpu_times()
    t0 = time.perf_counter()
    value = fn()
    wall = time.perf_counter() - t0
    u1, s1 = _cpu_times()
    return value, {
        "wall_s": wall,
        "user_s": u1 - u0,
        "system_s": s1 - s0,
        "threads": torch.get_num_threads(),
    }


def child_embed(variant: str, args) -> dict:
    import numpy as np

    from facekd.models.checkpoints import load_backbone

    model, crops = load_backbone(str(MODEL)), _crops(args.bin, args.images)
    if variant == "plain":
        emb, res = _timed(lambda: plain_embed(model, crops))
    else:
        from facekd.evaluation.embed import extract_embeddings

        kwargs = {
            "facekd_contiguous": {"channels_last": False},
            "facekd_bf16": {"bf16": True},
        }.get(variant, {})
        emb, res = _timed(
            lambda: extract_embeddings(model, crops, batch_size=BATCH, progress=False, **kwargs)
        )
    np.save(args.child_out + ".npy", np.asarray(emb, np.float32))
    return {**res, "images": len(crops), "img_per_s": len(crops) / res["wall_s"]}


def child_train(variant: str, args) -> dict:
    import torch

    from facekd.models import build_backbone, build_head

    torch.manual_seed(0)
    student = build_backbone("mobilefacenet").train()
    head = build_head("arcface", num_classes=TRAIN_CLASSES, embedding_size=student.num_features)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 3, 112, 112, generator=gen) * 2 - 1
    y = torch.randint(0, TRAIN_CLASSES, (BATCH,), generator=gen)
    if variant == "train_plain":
        params = [*student.parameters(), *head.parameters()]
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

        def step() -> None:
            out = head(student(x), y)
            loss = torch.nn.functional.cross_entropy(out.margin_logits, out.targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    else:
        from facekd.engine.distiller import Distiller
        from facekd.runtime import tune_cpu
        from facekd.types import Batch

        tune_cpu()
        distiller = Distiller(student, head=head).train()
        batch = Batch(images=x, labels=y)
        if variant == "train_facekd_cl":
            distiller = distiller.to(memory_format=torch.channels_last)
            batch = Batch(images=x.contiguous(memory_format=torch.channels_last), labels=y)
        opt = torch.optim.SGD(distiller.parameters(), lr=0.01, momentum=0.9)

        def step() -> None:
            distiller(batch)["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()

    def run() -> None:
        for _ in range(args.train_steps):
            step()

    _, res = _timed(run)
    return {**res, "steps": args.train_steps, "img_per_s": args.train_steps * BATCH / res["wall_s"]}


def child_layout(variant: str, args) -> dict:
    import numpy as np
    import torch

    from facekd.evaluation.embed import extract_embeddings
    from facekd.models import build_backbone

    _, arch, fmt = variant.split(":")
    torch.manual_seed(0)
    model = build_backbone(arch).eval()
    rng = np.random.default_rng(0)
    crops = list(rng.integers(0, 256, (args.layout_images, 112, 112, 3), dtype=np.uint8))
    extract_embeddings(model, crops[:BATCH], progress=False)  # warm-up: one batch
    emb, res = _timed(
        lambda: extract_embeddings(
            model, crops, batch_size=BATCH, channels_last=fmt == "cl", progress=False
        )
    )
    np.save(args.child_out + ".npy", emb)
    return {**res, "images": len(crops), "img_per_s": len(crops) / res["wall_s"]}


def child(variant: str, args) -> int:
    if variant.startswith("layout:"):
        res = child_layout(variant, args)
    elif variant.startswith("train_"):
        res = child_train(variant, args)
    else:
        res = child_embed(variant, args)
    from facekd.runtime import cpu as runtime

    res["runtime"] = runtime._REPORT.summary() if runtime._REPORT else "not called"
    Path(args.child_out).write_text(json.dumps(res))
    return 0


# ---------------------------------------------------------------------------- the parent
def _spawn(variant: str, args, tmp: Path) -> dict:
    out = tmp / variant.replace(":", "_")
    env = {k: v for k, v in os.environ.items() if k != "FACEKD_CPU_TUNING"}
    if variant in ("plain", "facekd_untuned", "train_plain"):
        env.update(UNTUNED)
    cmd = [sys.executable, __file__, "--child", variant, "--child-out", str(out)]
    cmd += ["--bin", args.bin, "--images", str(args.images)]
    cmd += ["--train-steps", str(args.train_steps), "--layout-images", str(args.layout_images)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    res = json.loads(out.read_text())
    print(
        f"  {variant:28s} {res['wall_s']:7.2f} s  {res['img_per_s']:7.1f} img/s  "
        f"user {res['user_s']:6.1f} s  system {res['system_s']:6.1f} s",
        flush=True,
    )
    return res


def _median(runs: list[dict]) -> dict:
    best = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    return {**best, "wall_s_runs": [r["wall_s"] for r in runs]}


def _min_cosine(a, b) -> float:
    return float((a * b).sum(1).min())


def _accuracy(args) -> dict:
    """LFW-mini verification, fp32 and bf16 through extract_embeddings' defaults."""
    from facekd.data.pairlists import read_lfw_pairs
    from facekd.data.verification import read_bin
    from facekd.evaluation.embed import extract_embeddings
    from facekd.evaluation.verification import verify
    from facekd.models.checkpoints import load_backbone

    folds = read_lfw_pairs(LFW / "pairs.txt", LFW / "images").fold_major().folds
    ps, model = read_bin(args.bin, "lfw_mini"), load_backbone(str(MODEL))
    out, emb = {}, {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        emb[name] = extract_embeddings(model, ps.pair_images(), bf16=bf16, progress=False)
        r = verify(emb[name], ps.issame, folds=folds, thresholds="grid")
        out[name] = {"accuracy": r.accuracy, "accuracy_std": r.accuracy_std}
    out["min_cosine_bf16_vs_fp32"] = _min_cosine(emb["bf16"], emb["fp32"])
    out["pairs"] = len(ps)
    return out


def _environment() -> dict:
    import torch

    from facekd.evaluation.profile import bf16_support, cpu_name

    return {
        "cpu": cpu_name(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torch_default_threads": torch.get_num_threads(),
        "bf16_native": bf16_support("cpu")[0],
        "python": platform.python_version(),
        "libc": os.confstr("CS_GNU_LIBC_VERSION"),
        "load_before": round(os.getloadavg()[0], 2),
    }


def _cpu(r: dict) -> float:
    return r["user_s"] + r["system_s"]


def _row(name: str, r: dict, ref: dict) -> str:
    cos = f"{r['min_cosine']:.6f}" if "min_cosine" in r else "–"
    runs = ", ".join(f"{w:.1f}" for w in r["wall_s_runs"])
    return (
        f"| {name} | {r['wall_s']:.2f} ({runs}) | {r['img_per_s']:.1f} | {r['user_s']:.1f} | "
        f"{r['system_s']:.1f} | {r['threads']} | **{ref['wall_s'] / r['wall_s']:.2f}x** | "
        f"{_cpu(ref) / _cpu(r):.2f}x | {cos} |"
    )


_HEADER = [
    "| variant | wall (s): median (runs) | img/s | user CPU (s) | system CPU (s) | threads | "
    "wall speed-up vs plain | CPU-time speed-up vs plain | min cosine vs plain |",
    "|---|---|---|---|---|---|---|---|---|",
]


def _markdown(res: dict) -> str:
    e, lines = res["embed"], []
    lines += [
        "# CPU speed: facekd's default paths vs a plain torch loop",
        "",
        f"Command: `{res['command']}`",
        "",
        f"- machine: {res['env']['cpu']}, {res['env']['cpus_available']} CPUs available, "
        f"torch {res['env']['torch']}, {res['env']['libc']}, native bf16: "
        f"{res['env']['bf16_native']}, load average before: {res['env']['load_before']}",
        f"- every timing in a fresh process; median of {res['repeats']} run(s), interleaved; "
        "CPU time = user + system of the timed call (a shared machine inflates wall time when "
        "other processes hold the cores; CPU time shows the work itself)",
        "",
        f"## Embedding {e['plain']['images']} held-out LFW-mini crops (legacy MobileFaceNet, "
        "flip-sum, batch 64)",
        "",
        *_HEADER,
    ]
    lines += [_row(k, e[k], e["plain"]) for k in EMBED if k in e]
    if "train" in res:
        t = res["train"]
        lines += [
            "",
            "## Training step (MobileFaceNet from scratch, 112 px, batch 64, ArcFace, SGD)",
            "",
            *_HEADER,
        ]
        lines += [_row(k, t[k], t["train_plain"]) for k in TRAIN if k in t]
    if res.get("layout"):
        lines += [
            "",
            f"## Layout per architecture (random weights, {res['layout_images']} random crops, "
            "tuned runtime, fp32)",
            "",
            "`channels_last=False` runs the module as given; the default inference copy has "
            "BatchNorm folded into the convolutions and channels-last memory.",
            "",
            "| architecture | as given img/s | inference copy img/s | speed-up | min cosine |",
            "|---|---|---|---|---|",
        ]
        for arch, r in res["layout"].items():
            lines.append(
                f"| {arch} | {r['contiguous']['img_per_s']:.1f} | {r['cl']['img_per_s']:.1f} | "
                f"{r['speedup']:.2f}x | {r['min_cosine']:.6f} |"
            )
    if res.get("accuracy"):
        a = res["accuracy"]
        lines += [
            "",
            f"## LFW-mini accuracy, fp32 vs bf16 ({a['pairs']} pairs, 2 official folds, "
            "grid thresholds)",
            "",
            "| precision | accuracy (%) | ± std |",
            "|---|---|---|",
        ]
        lines += [
            f"| {k} | {100 * a[k]['accuracy']:.2f} | {100 * a[k]['accuracy_std']:.2f} |"
            for k in ("fp32", "bf16")
        ]
        lines += ["", f"Lowest per-image cosine bf16 vs fp32: {a['min_cosine_bf16_vs_fp32']:.5f}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=str(ROOT / "outputs" / "lfw_mini.bin"))
    p.add_argument("--images", type=int, default=1024, help="LFW-mini crops to embed")
    p.add_argument("--repeats", type=int, default=3, help="fresh-process runs per variant")
    p.add_argument("--train-steps", type=int, default=8)
    p.add_argument("--layout-archs", nargs="*", default=["mobilefacenet", "mbf", "iresnet50"])
    p.add_argument("--layout-images", type=int, default=64)
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-accuracy", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke test: few images and steps")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args)
    if args.render:
        res = json.loads((Path(args.out_dir) / "cpu_speed.json").read_text())
        (Path(args.out_dir) / "cpu_speed.md").write_text(_markdown(res))
        return 0
    if args.quick:
        args.images, args.train_steps, args.layout_images = 128, 2, 64
        args.layout_archs, args.no_accuracy = ["mobilefacenet"], True

    if not Path(f"{MODEL}-symbol.json").exists() or not (LFW / "pairs.txt").exists():
        print(f"SKIP: real data not available under {DATA}; nothing to benchmark.")
        return 0
    if not Path(args.bin).exists():
        print(f"error: {args.bin} missing: run benchmarks/bench_lfw_legacy.py once to build it")
        return 1

    from facekd.runtime import tune_cpu

    env = _environment()  # before tuning: torch's own default thread count
    tune_cpu()
    t0 = time.perf_counter()
    variants = list(EMBED) + ([] if args.no_train else list(TRAIN))
    variants += [f"layout:{a}:{f}" for a in args.layout_archs for f in ("contiguous", "cl")]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            print(f"round {r + 1}/{args.repeats}", flush=True)
            for v in variants if r % 2 == 0 else variants[::-1]:
                res = _spawn(v, args, Path(tmp))
                npy = Path(tmp) / (v.replace(":", "_") + ".npy")
                if npy.exists():
                    res["emb"] = np.load(npy)
                runs[v].append(res)
        med = {v: _median(rs) for v, rs in runs.items()}
    ref = med["plain"]["emb"]
    for v in EMBED:
        med[v]["min_cosine"] = _min_cosine(med[v]["emb"], ref)
    layout = {}
    for a in args.layout_archs:
        c, cl = med[f"layout:{a}:contiguous"], med[f"layout:{a}:cl"]
        layout[a] = {
            "contiguous": c,
            "cl": cl,
            "speedup": c["wall_s"] / cl["wall_s"],
            "min_cosine": _min_cosine(c["emb"], cl["emb"]),
        }
    for r in med.values():
        r.pop("emb", None)
    res = {
        "command": " ".join(
            [".venv/bin/python", "benchmarks/bench_cpu_speed.py"]
            + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]
        ),
        "env": env,
        "repeats": args.repeats,
        "embed": {v: med[v] for v in EMBED},
        "speedup_facekd_vs_plain": med["plain"]["wall_s"] / med["facekd"]["wall_s"],
        "cpu_time_speedup_facekd_vs_plain": _cpu(med["plain"]) / _cpu(med["facekd"]),
        "layout_images": args.layout_images,
        "layout": layout,
    }
    if not args.no_train:
        res["train"] = {v: med[v] for v in TRAIN}
    if not args.no_accuracy:
        print("LFW-mini accuracy, fp32 vs bf16 ...", flush=True)
        res["accuracy"] = _accuracy(args)
    res["wall_time_s"] = time.perf_counter() - t0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_speed.json").write_text(json.dumps(res, indent=1) + "\n")
    md = _markdown(res)
    (out / "cpu_speed.md").write_text(md)
    print(md)
    print(
        f"speed-up facekd default vs plain: {res['speedup_facekd_vs_plain']:.2f}x wall, "
        f"{res['cpu_time_speedup_facekd_vs_plain']:.2f}x CPU time "
        f"(min cosine {med['facekd']['min_cosine']:.6f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
