"""The one embedding-extraction path: evaluation, ``facekd embed`` and export checks use it.

``extract_embeddings(model, images)`` -> ``(N, D)`` float32, following insightface's test-time
recipe (``recognition/arcface_torch/eval/verification.py``, ``eval_ijbc.py``; METHODS.md 5.1):
faces normalised as ``(x / 255 - 0.5) / 0.5`` RGB (``transforms.to_tensor``), embedding =
``f(x) + f(flip(x))`` of the raw outputs, **then** L2-normalised (``normalize=False`` keeps the
norm, as IJB template pooling needs). The sum and the normalisation run in float64.

Faces (``prepare_face``, the one place of evaluation-time resizing): an aligned square crop is
resized to the model's input size (``model.input_size``, the ONNX input shape, or
``input_size=``); down-sampling uses ``INTER_AREA``, up-sampling ``INTER_CUBIC`` (the filter of
``FaceAugment(upsample_back=True)`` in training). ``degrade_to=s`` first down-samples the crop
to ``s`` x ``s`` (``INTER_AREA``, as the training degradation): the low-resolution test of
Karlekar et al. (arXiv:1906.00619). A model built for ``s`` then sees the small face; a larger
model sees it up-sampled back to its input size.

Backends: a ``torch.nn.Module`` with ``forward(x) -> (B, D)``; a backbone name or checkpoint
path (``facekd.models.checkpoints.load_backbone``); an ``.onnx`` path or an
``onnxruntime.InferenceSession`` (first input, float32 NCHW; a fixed batch dimension is
honoured by chunking and padding).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from facekd.data.transforms import flip as hflip
from facekd.data.transforms import read_rgb, resize, to_tensor
from facekd.runtime import torch_threads, tune_cpu, worker_init

Runner = Callable[[Tensor], np.ndarray]  # (B, 3, H, W) float32 -> (B, D)


def prepare_face(
    image: np.ndarray, size: int | None = None, degrade_to: int | None = None
) -> np.ndarray:
    """``(H, H, 3)`` uint8 RGB crop -> ``(size, size, 3)`` uint8 (``size=None``: keep ``H``).

    ``degrade_to``: down-sample to that side first (``INTER_AREA``); the result is then resized
    to ``size`` (``INTER_AREA`` down, ``INTER_CUBIC`` up).
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB face, got {getattr(image, 'shape', type(image))}")
    if image.dtype != np.uint8 or image.shape[0] != image.shape[1]:
        raise ValueError(f"expected a square uint8 aligned crop, got {image.shape} {image.dtype}")
    target = size or image.shape[0]
    if degrade_to is not None:
        image = resize(image, degrade_to)
    up = image.shape[0] < target
    return resize(image, target, interpolation=cv2.INTER_CUBIC if up else cv2.INTER_AREA)


class FaceImages(Dataset):
    """``(3, size, size)`` float faces from crops, encoded bytes, paths or data-set items.

    Items of ``images``: ``(H, W, 3)`` uint8 RGB; bytes or a path (``transforms.read_rgb``);
    a dict with ``"image"`` (``facekd.data.batching`` items); or a normalised ``(3, H, W)``
    tensor, used as is (it must already have the model's size; no degradation possible).
    """

    def __init__(self, images, size: int | None = None, degrade_to: int | None = None) -> None:
        self.images, self.size, self.degrade_to = images, size, degrade_to

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        item = self.images[index]
        if isinstance(item, dict):
            item = item["image"]
        if isinstance(item, Tensor):
            _check_tensor(item[None], self.size, self.degrade_to)
            return item.float()
        if isinstance(item, (bytes, bytearray, memoryview, str, os.PathLike)):
            item = read_rgb(bytes(item) if isinstance(item, memoryview) else item)
        return to_tensor(prepare_face(item, self.size, self.degrade_to))


def _check_tensor(x: Tensor, size: int | None, degrade_to: int | None) -> None:
    if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"tensor faces must be (N, 3, H, W) float, got {tuple(x.shape)}")
    if degrade_to is not None or (size is not None and tuple(x.shape[-2:]) != (size, size)):
        raise ValueError(
            f"tensor faces are used as given ({x.shape[-2]}x{x.shape[-1]}); to resize to "
            f"{size} or degrade_to={degrade_to}, pass uint8 crops, bytes or paths"
        )


#: architectures (``model.arch`` prefixes) that embed faster as a channels-last inference copy
#: on CPU, measured by ``benchmarks/bench_cpu_speed.py`` (fp32, oneDNN, flip-sum, batch 64):
#: MobileFaceNet 1.5-2x, MBF about 1.3x; iResNet-50 no faster (its BNs mostly precede the
#: convolutions, so little folds), so iResNets run as given
CHANNELS_LAST_CPU = ("mobilefacenet", "mbf")


def prefers_channels_last(module: nn.Module, device: str | torch.device | None = None) -> bool:
    """The ``channels_last=None`` default: True for a measured architecture on CPU."""
    if device is None:
        param = next(module.parameters(), None)
        device = param.device if param is not None else "cpu"
    arch = getattr(module, "arch", "") or ""
    return torch.device(device).type == "cpu" and arch.startswith(CHANNELS_LAST_CPU)


def is_channels_last(module: nn.Module) -> bool:
    """Every 4-d parameter and buffer of ``module`` is stored channels-last."""
    tensors = [*module.parameters(), *module.buffers()]
    return all(t.is_contiguous(memory_format=torch.channels_last) for t in tensors if t.dim() == 4)


def _conv_bn_pairs(module: nn.Module) -> list[tuple[nn.Sequential, int]]:
    """``(sequential, i)`` where item ``i`` is a ``Conv2d`` and ``i + 1`` a foldable BN."""
    return [
        (seq, i)
        for seq in module.modules()
        if isinstance(seq, nn.Sequential)
        for i in range(len(seq) - 1)
        if isinstance(seq[i], nn.Conv2d)
        and isinstance(seq[i + 1], nn.BatchNorm2d)
        and seq[i + 1].running_var is not None
    ]


@torch.no_grad()
def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold each ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential``
    into that convolution, in place (the BN becomes ``nn.Identity``); returns ``module``.

    ``conv(x) * s + (beta - mu * s)`` with ``s = gamma / sqrt(var + eps)``: the eval-mode
    output is unchanged up to float rounding; training-mode BN is gone, so inference only.
    """
    for seq, i in _conv_bn_pairs(module):
        conv, bn = seq[i], seq[i + 1]
        scale = (bn.running_var + bn.eps).rsqrt()
        shift = -bn.running_mean * scale
        if bn.affine:
            scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
        bias = conv.bias * scale if conv.bias is not None else 0.0
        conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter(bias + shift, requires_grad=False)
        seq[i + 1] = nn.Identity()
    return module


def inference_copy(
    module: nn.Module, device: str | torch.device | None = None, channels_last: bool = False
) -> nn.Module:
    """An eval-mode copy for embedding: BN folded (``fold_batchnorm``), moved to ``device``,
    channels-last if asked. ``module`` itself is untouched."""
    net = fold_batchnorm(copy.deepcopy(module).eval()).to(device)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _torch_runner(module: nn.Module, device, channels_last: bool | None, bf16: bool):
    param = next(module.parameters(), None)
    current = param.device if param is not None else torch.device("cpu")
    dev = torch.device(device) if device is not None else current
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if channels_last is None:
        channels_last = prefers_channels_last(module, dev)
    ready = not channels_last or (is_channels_last(module) and not _conv_bn_pairs(module))
    net = module
    if dev != current or not ready:  # never move or reformat the caller's module
        net = inference_copy(module, dev, channels_last)
    modes = [(m, m.training) for m in module.modules()]  # restored one by one afterwards
    net.eval()

    def run(x: Tensor) -> np.ndarray:
        x = x.to(dev, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
            out = net(x)
        if not isinstance(out, Tensor) or out.dim() != 2 or len(out) != len(x):
            raise ValueError(f"model must return a (B, D) tensor, got {type(out).__name__}")
        return out.float().cpu().numpy()

    def restore() -> None:
        for m, training in modes:
            m.training = training

    return run, getattr(module, "input_size", None), restore


def _onnx_runner(session, device, bf16: bool):
    import onnxruntime as ort

    if bf16:
        raise ValueError("bf16=True applies to torch models only; an ONNX graph fixes its dtype")
    if not isinstance(session, ort.InferenceSession):
        providers = ["CPUExecutionProvider"]
        if device is not None and torch.device(device).type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError("device is CUDA but onnxruntime has no CUDAExecutionProvider")
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(str(session), providers=providers)
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    size = inp.shape[2] if len(inp.shape) == 4 and isinstance(inp.shape[2], int) else None

    def run(x: Tensor) -> np.ndarray:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if fixed is None:
            return session.run(None, {inp.name: arr})[0]
        outs = []
        for s in range(0, len(arr), fixed):
            part = arr[s : s + fixed]
            pad = np.zeros((fixed - len(part), *arr.shape[1:]), np.float32)
            outs.append(session.run(None, {inp.name: np.concatenate([part, pad])})[0][: len(part)])
        return np.concatenate(outs)

    return run, size, lambda: None


def _backend(model, device, channels_last: bool | None, bf16: bool):
    if isinstance(model, nn.Module):
        return _torch_runner(model, device, channels_last, bf16)
    if isinstance(model, (str, os.PathLike)) and not str(model).endswith(".onnx"):
        from facekd.models.checkpoints import load_backbone

        return _torch_runner(load_backbone(model), device, channels_last, bf16)
    if isinstance(model, (str, os.PathLike)) or type(model).__name__ == "InferenceSession":
        return _onnx_runner(model, device, bf16)
    raise TypeError(
        "model must be a torch module, a backbone name or checkpoint path, an .onnx path or an "
        f"onnxruntime.InferenceSession; got {type(model).__name__}"
    )


def _single_threaded(batches, apply: bool):
    """Yield from ``batches``, producing each one with a single torch thread when ``apply``
    (in-process per-face preprocessing: ``runtime.torch_threads``); the forward keeps all."""
    it = iter(batches)
    while True:
        with torch_threads(1) if apply else contextlib.nullcontext():
            x = next(it, None)
        if x is None:
            return
        yield x


def _face_batches(images, size, degrade_to, batch_size: int, num_workers: int, device):
    """``(B, 3, size, size)`` float batches of ``images``: a normalised tensor sliced as given
    (checked by ``_check_tensor``), anything else decoded and resized by ``FaceImages`` in a
    DataLoader (pinned memory when ``device`` is CUDA)."""
    if isinstance(images, Tensor):
        _check_tensor(images, size, degrade_to)
        return (images[s : s + batch_size] for s in range(0, len(images), batch_size))
    return DataLoader(
        FaceImages(images, size, degrade_to),
        batch_size=batch_size,
        num_workers=num_workers,
        worker_init_fn=worker_init,
        pin_memory=device is not None and torch.device(device).type == "cuda",
    )


def _embed_batch(run: Runner, x: Tensor, flip: bool, normalize: bool) -> np.ndarray:
    """``(B, D)`` float64 embeddings of one batch: ``f(x) + f(flip(x))`` when ``flip`` (one
    forward of both views), L2-normalised when ``normalize`` (zero rows stay zero)."""
    both = run(torch.cat([x, hflip(x)]) if flip else x).astype(np.float64)
    emb = both[: len(x)] + both[len(x) :] if flip else both
    if normalize:
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.where(norm > 0, norm, 1.0)
    return emb


def extract_embeddings(
    model,
    images: Sequence | Tensor | np.ndarray,
    batch_size: int = 64,
    flip: bool = True,
    normalize: bool = True,
    channels_last: bool | None = None,
    bf16: bool = False,
    num_workers: int = 0,
    input_size: int | None = None,
    degrade_to: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Embed ``N`` aligned faces -> ``(N, D)`` float32 (see the module docstring).

    Args:
        model: torch module, backbone name / checkpoint path, ``.onnx`` path or ORT session.
        images: sequence of ``(H, W, 3)`` uint8 RGB crops, encoded bytes or file paths
            (decoded in DataLoader workers), data-set items (``FaceImages``), an ``(N, H, W, 3)``
            uint8 array, or an ``(N, 3, H, W)`` float tensor already normalised to [-1, 1].
        batch_size: faces per forward (the flipped copies double it). Default 64.
        flip: flip-sum test ``f(x) + f(flip(x))`` (insightface). Default True.
        normalize: L2-normalise the result. Default True (False for IJB template pooling).
        channels_last: torch only: run an ``inference_copy`` of the module, BatchNorm folded
            into the convolutions and channels-last memory (fp32; embeddings equal up to
            float rounding). Default None: on where measured faster (``prefers_channels_last``:
            facekd's MobileFaceNet / MBF on CPU). False: the module as given.
        bf16: torch only: bf16 autocast on ``device``'s type (explicit; about 2x faster on
            CPUs with native bf16, a small accuracy change: see README). Default off.
        num_workers: DataLoader workers for decoding / resizing (``runtime.worker_init``:
            one thread each). Default 0 (in process).
        input_size: side fed to the model; default the model's own (``input_size``
            attribute or ONNX input shape), else the crops' size.
        degrade_to: low-resolution test: down-sample crops to this side first. Default None.
        device: torch device (ONNX: ``cuda`` selects the CUDA provider); default: where the
            module's parameters are (CPU for files). A module on another device, or with
            ``channels_last`` and not already an inference copy, is copied
            (``inference_copy``); the caller's module is never moved and its train/eval
            mode is restored.
        progress: tqdm progress bar.

    The first call of a process tunes the CPU runtime (``facekd.runtime.tune_cpu``: allocator,
    threads; ``FACEKD_CPU_TUNING=0`` turns it off).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if degrade_to is not None and (not isinstance(degrade_to, int) or degrade_to < 4):
        raise ValueError(f"degrade_to must be None or an int >= 4, got {degrade_to!r}")
    if len(images) == 0:
        raise ValueError("no images to embed")
    tune_cpu()
    run, model_size, restore = _backend(model, device, channels_last, bf16)
    out, done = None, 0
    try:
        size = input_size or model_size
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype != np.uint8:
            images = torch.from_numpy(images)
        batches = _face_batches(images, size, degrade_to, batch_size, num_workers, device)
        with tqdm(total=len(images), desc="embed", unit="img", disable=not progress) as bar:
            for x in _single_threaded(batches, num_workers == 0):
                x = x.float()
                emb = _embed_batch(run, x, flip, normalize)
                if out is None:
                    out = np.empty((len(images), emb.shape[1]), np.float32)
                out[done : done + len(x)] = emb
                done += len(x)
                bar.update(len(x))
    finally:
        restore()
    if not np.isfinite(out).all():
        raise ValueError("the model produced NaN or inf embeddings")
    return out


@torch.no_grad()
def dataset_embeddings(
    model: nn.Module,
    dataset,
    indices: Sequence[int] | None = None,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> np.ndarray:
    """``(N, D)`` float32 embeddings of a training data set's items as the teacher sees them
    (``forward_features(batch.teacher_view).embedding``: the data set's own transform, no
    flip-sum, not normalised): the path neuron selection and the fitted teacher head share.
    ``extract_embeddings`` is the one path for face images (evaluation, ``facekd embed``).
    ``device``: where to run; ``None`` leaves the model where it is (its parameters' device,
    CPU for a parameter-free model such as an ONNX teacher). ``progress``: a tqdm bar."""
    from facekd.data.batching import collate_batch

    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model = model.to(device).eval()
    subset = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    loader = DataLoader(
        subset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_batch
    )
    chunks = [
        model.forward_features(batch.to(device).teacher_view).embedding.float().cpu().numpy()
        for batch in tqdm(loader, desc="teacher embeddings", disable=not progress)
    ]
    return np.concatenate(chunks, axis=0)
