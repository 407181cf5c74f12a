"""``facekd embed SRC --model M --out emb.npz``: embed every image of a folder, resumably.

Input: ``SRC`` walked at any depth (``align_tree.list_images``: jpg / jpeg / png / bmp / webp).
Each file is decoded strictly (``transforms.read_photo``, in DataLoader workers) and then

* ``aligned=True``: used as an aligned crop (it must be square; resized to the model's input);
* ``aligned=False`` (raw photos): MTCNN (``detect.FaceDetector``, ``policy`` picks one face;
  a tight photo whose face box leaves the frame is detected again with an edge-padded border,
  ``detect.detect_with_context``) and five-point alignment (``align.norm_crop``) to a
  ``align_size`` crop, exactly as ``facekd align`` does, then embedded.

Embeddings come from ``extract_embeddings`` (the one path: flip-sum by default, L2-normalised,
float32), through torch (checkpoint / name) or onnxruntime (``.onnx``).

Output files:

* ``emb.npz``: ``embeddings (N, D) float32``, ``paths (N,)`` relative POSIX paths (sorted, each
  good image exactly once), ``meta`` (JSON string: model, its fingerprint, backend, flip,
  aligned, sizes);
* ``emb.failed.json``: ``{"meta", "failed": {path: "reason: detail"}, "failed_by_reason"}``
  with reasons ``unreadable``, ``truncated``, ``empty``, ``too_small`` (decoding),
  ``not_square`` (aligned mode), ``no_face``, ``small_face`` (raw mode).

Resuming: work is written as shards (``emb.npz.parts/shard_NNNNN.npz``, every ``shard_size``
images, atomically) and the failure list is rewritten after every shard. A rerun with the same
settings reuses the rows of ``emb.npz``, of every shard and the recorded failures (unless
``retry_failed``), embeds only what is left, writes ``emb.npz`` and removes the parts folder.
So an interrupted run loses at most one shard, a finished run redoes nothing, and images added
to the folder later are the only ones embedded. Different settings (another model file, flip,
mode) refuse to mix with existing results: ``overwrite=True`` starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from facekd.data.align_tree import _Photos, list_images
from facekd.data.detect import detect_with_context
from facekd.evaluation.embed import extract_embeddings, fold_batchnorm, prefers_channels_last
from facekd.runtime import tune_cpu, worker_init

ALIGN_SIZE = 112


@dataclass
class EmbedReport:
    """``embedded`` this run, ``reused`` from earlier runs, ``failed`` {path: reason}, ``out``."""

    embedded: int = 0
    reused: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    out: Path | None = None


def fingerprint(model) -> str:
    """sha256 of the model file(s) (a folder: all its files), or ``name:<model>``."""
    path = Path(str(model))
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not path.exists():
        prefix = Path(f"{model}-symbol.json")  # legacy MXNet prefix
        files = sorted(prefix.parent.glob(f"{path.name}-*")) if prefix.exists() else []
    if not files:
        return f"name:{model}" if isinstance(model, (str, os.PathLike)) else "module"
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def load_runner(model, backend: str | None = None):
    """(runner for ``extract_embeddings``, input size). ``backend``: torch, onnx or None (auto)."""
    is_onnx = str(model).endswith(".onnx") or type(model).__name__ == "InferenceSession"
    backend = backend or ("onnx" if is_onnx else "torch")
    if backend not in ("torch", "onnx"):
        raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
    if backend == "onnx":
        if not is_onnx:
            raise ValueError(f"backend 'onnx' needs an .onnx file (facekd export), got {model}")
        import onnxruntime as ort

        session = model
        if not isinstance(model, ort.InferenceSession):
            session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        size = session.get_inputs()[0].shape[2]
        return session, size if isinstance(size, int) else None
    if is_onnx:
        raise ValueError(f"{model} is an ONNX file: use backend 'onnx'")
    if isinstance(model, torch.nn.Module):
        return model.eval(), getattr(model, "input_size", None)
    from facekd.models.checkpoints import load_backbone

    net = load_backbone(model)
    return net, net.input_size


def _save_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _read_rows(path: Path, meta: dict) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        found = json.loads(str(z["meta"]))
        if found != meta:
            changed = sorted(k for k in set(meta) | set(found) if meta.get(k) != found.get(k))
            raise ValueError(
                f"{path} was made with other settings ({', '.join(changed)} differ); pass "
                "overwrite=True (--overwrite) or choose another output"
            )
        return dict(zip(z["paths"].tolist(), z["embeddings"], strict=True))


def _save_failures(path: Path, failed: dict[str, str], meta: dict) -> None:
    counts: dict[str, int] = {}
    for reason in failed.values():
        counts[reason.split(":")[0]] = counts.get(reason.split(":")[0], 0) + 1
    payload = {"meta": meta, "failed_by_reason": counts, "failed": dict(sorted(failed.items()))}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _crops(src, names, aligned, detector, workers, batch, min_face, align_size):
    """Yield ``(name, crop or None, reason or None)`` for ``names`` (decode -> detect -> align)."""
    loader = torch.utils.data.DataLoader(
        _Photos(Path(src), names, 24 if not aligned else 8),
        batch_size=batch,
        num_workers=workers if len(names) > batch else 0,
        collate_fn=list,
        worker_init_fn=worker_init,
    )
    for chunk in loader:
        # _Photos items are (name, image, error, pad offset); no padding here: offset (0, 0)
        good = [(n, img) for n, img, err, _ in chunk if err is None]
        for n, _, err, _ in chunk:
            if err is not None:
                yield n, None, err
        if aligned:
            for n, img in good:
                h, w = img.shape[:2]
                if h != w:
                    yield n, None, f"not_square: {w}x{h} px is not an aligned crop (drop --aligned)"
                else:
                    yield n, np.array(img), None  # writable (PIL arrays are read-only)
            continue
        # a tight photo (face box off the frame) gets a second look with an edge-padded border
        found = detect_with_context(detector, [img for _, img in good]) if good else []
        for (n, img), dets in zip(good, found, strict=True):
            big = [d for d in dets if d.size >= min_face]
            if not dets:
                yield n, None, "no_face: MTCNN found none"
            elif not big:
                yield n, None, f"small_face: every face is under {min_face:g} px"
            else:
                yield n, big[0].crop(img, align_size), None


def inference_runner(model, backend: str | None = None, bf16: bool = False):
    """``(runner, input size, is_torch)`` from ``load_runner``, for repeated embedding (every
    shard here, every call of ``facekd.deploy.api.FaceModel``): a module facekd loaded itself
    (never the caller's) is BN-folded and made channels-last once where that is measured faster
    (``prefers_channels_last``), so ``extract_embeddings`` does not copy it at every call.
    ``bf16`` with an ONNX runner raises ``ValueError``."""
    runner, size = load_runner(model, backend)
    is_torch = isinstance(runner, torch.nn.Module)
    if bf16 and not is_torch:
        raise ValueError("bf16=True applies to torch models only; an ONNX graph fixes its dtype")
    if is_torch and runner is not model and prefers_channels_last(runner):
        # our own module (never the caller's): made an inference module once, not per call
        runner = fold_batchnorm(runner.eval()).to(memory_format=torch.channels_last)
    return runner, size, is_torch


def _settings(
    model,
    is_torch: bool,
    size: int | None,
    flip: bool,
    bf16: bool,
    aligned: bool,
    policy: str,
    min_face: float,
    align_size: int,
) -> dict:
    """The ``meta`` stored with every result: what must match for results to be reused (model
    and its fingerprint, backend, flip, bf16 when on, input size; detection only in raw mode)."""
    return {
        "model": str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        "model_fingerprint": fingerprint(model),
        "backend": "torch" if is_torch else "onnx",
        "flip": bool(flip),
        **({"bf16": True} if bf16 else {}),
        "normalized": True,
        "aligned": bool(aligned),
        "input_size": size,
        **({} if aligned else {"policy": policy, "min_face": min_face, "align_size": align_size}),
    }


def _earlier_results(
    out: Path, parts: Path, fail_path: Path, meta: dict, overwrite: bool, retry_failed: bool
) -> tuple[dict[str, np.ndarray], list[Path], dict[str, str]]:
    """What earlier runs with the same ``meta`` left: ``(rows {path: embedding} of the output
    and every shard, the shard files sorted, recorded failures)``. ``overwrite`` deletes it all
    first; ``retry_failed`` forgets the failures; other settings raise (``_read_rows``)."""
    if overwrite:
        shutil.rmtree(parts, ignore_errors=True)
        out.unlink(missing_ok=True)
        fail_path.unlink(missing_ok=True)
    done: dict[str, np.ndarray] = _read_rows(out, meta) if out.exists() else {}
    shards = sorted(parts.glob("shard_*.npz")) if parts.is_dir() else []
    for shard in shards:
        done.update(_read_rows(shard, meta))
    failed: dict[str, str] = {}
    if fail_path.exists() and not retry_failed:
        old = json.loads(fail_path.read_text(encoding="utf-8"))
        failed = old["failed"] if old.get("meta") == meta else {}
    return done, shards, failed


def _split_crops(results, failed: dict[str, str], bar) -> tuple[list[str], list[np.ndarray]]:
    """``(names, crops)`` of the good ``(name, crop, reason)`` results; each failure's reason
    goes into ``failed``; ``bar`` advances once per result."""
    ok, crops = [], []
    for name, crop, reason in results:
        if reason is None:
            ok.append(name)
            crops.append(crop)
        else:
            failed[name] = reason
        bar.update(1)
    return ok, crops


def _save_output(out: Path, names: list[str], done: dict[str, np.ndarray], meta: dict) -> None:
    """The final ``.npz``: the rows of ``done`` in ``names`` order (``(0, D)`` when none)."""
    keep = [n for n in names if n in done]
    dim = next(iter(done.values())).shape[0] if done else 0
    _save_npz(
        out,
        embeddings=np.stack([done[n] for n in keep]).astype(np.float32)
        if keep
        else np.zeros((0, dim), np.float32),
        paths=np.array(keep, dtype=str),
        meta=np.array(json.dumps(meta)),
    )


def embed_folder(
    src: str | os.PathLike,
    model,
    out: str | os.PathLike,
    aligned: bool = False,
    flip: bool = True,
    backend: str | None = None,
    batch_size: int = 64,
    workers: int = 2,
    shard_size: int = 1024,
    policy: str = "center",
    min_face: float = 20.0,
    align_size: int = ALIGN_SIZE,
    overwrite: bool = False,
    retry_failed: bool = False,
    bf16: bool = False,
    detector=None,
    progress: bool = True,
) -> EmbedReport:
    """Embed every image below ``src`` into ``out`` (.npz); see the module docstring.

    Args:
        model: checkpoint / name / legacy prefix (torch) or ``.onnx`` file; or a module or an
            onnxruntime session (then the fingerprint is only their type: avoid resuming).
        backend: ``"torch"``, ``"onnx"`` or None (from the model's suffix).
        batch_size: faces per forward; also photos per MTCNN batch (at most 16).
        workers: DataLoader decoding processes.
        shard_size: images per shard (resume granularity).
        policy, min_face, align_size: raw mode only (``facekd.data.detect``).
        bf16: torch only: bf16 autocast (``extract_embeddings``); recorded in the meta, so
            fp32 and bf16 results never mix.
        detector: an object with ``detect(images) -> list[list[Detection]]`` (tests).
    Returns:
        ``EmbedReport``; raises ``FileNotFoundError`` for a missing ``src`` and ``ValueError``
        for settings that do not match earlier results.
    """
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"output must be a .npz file, got {out}")
    tune_cpu()
    names = list_images(src)
    runner, size, is_torch = inference_runner(model, backend, bf16)
    meta = _settings(model, is_torch, size, flip, bf16, aligned, policy, min_face, align_size)
    parts, fail_path = Path(f"{out}.parts"), out.with_suffix(".failed.json")
    done, shards, failed = _earlier_results(out, parts, fail_path, meta, overwrite, retry_failed)
    report = EmbedReport(reused=sum(n in done for n in names), out=out)
    todo = [n for n in names if n not in done and n not in failed]
    if todo and not aligned and detector is None:
        from facekd.data.detect import FaceDetector

        detector = FaceDetector(min_face_size=int(min_face), policy=policy)
    parts.mkdir(parents=True, exist_ok=True)
    next_shard = int(shards[-1].stem.split("_")[1]) + 1 if shards else 0
    bar = tqdm(total=len(todo), desc="embed", unit="img", disable=not progress)
    for start in range(0, len(todo), shard_size):
        chunk = todo[start : start + shard_size]
        results = _crops(
            src, chunk, aligned, detector, workers, min(batch_size, 16), min_face, align_size
        )
        ok, crops = _split_crops(results, failed, bar)
        if ok:
            emb = extract_embeddings(
                runner, crops, batch_size=batch_size, flip=flip, bf16=bf16, progress=False
            )
            shard = parts / f"shard_{next_shard:05d}.npz"
            _save_npz(shard, embeddings=emb, paths=np.array(ok), meta=np.array(json.dumps(meta)))
            next_shard += 1
            done.update(zip(ok, emb, strict=True))
            report.embedded += len(ok)
        _save_failures(fail_path, failed, meta)
    bar.close()
    _save_output(out, names, done, meta)
    report.failed = {n: failed[n] for n in names if n in failed}
    _save_failures(fail_path, report.failed, meta)
    shutil.rmtree(parts, ignore_errors=True)
    return report
