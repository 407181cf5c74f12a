"""Typed configuration: nested dataclasses are the only source of defaults.

A YAML file (short, no tags, no code) and ``--set a.b=value`` overrides are laid over the
defaults; every key is checked against the dataclass fields and every value against the
field's type, and an error names the offending dotted key. Unknown keys never pass silently.

Supported field types: ``bool``, ``int``, ``float`` (ints accepted), ``str``, ``Literal[...]``,
``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, Any]`` (free-form keyword arguments
for a registry entry) and nested dataclasses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem; the message names the dotted key."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (partial) mapping; missing keys keep their defaults."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f" in {prefix}" if prefix else ""
        raise ConfigError(f"unknown key(s) {unknown}{where}; valid keys: {names}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from None


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (tuples become lists), ready for YAML / JSON."""
    return yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(cfg))))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Defaults of ``cls`` <- YAML file at ``path`` <- dotted ``overrides``, all type-checked."""
    data: dict = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded or {}
    for assignment in overrides:
        apply_override(data, assignment)
    return from_dict(cls, data)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (next to a checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


# -- the experiment schema (what `facekd train CONFIG` reads) -------------------------------
@dataclasses.dataclass
class TrainSettings:
    """How to train (the Trainer's knobs; see ``facekd.config.TrainConfig`` for the YAML side)."""

    steps: int = 1000
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    accumulate: int = 1
    clip_grad_norm: float = 0.0
    log_every: int = 10
    checkpoint_every: int = 200
    eval_every: int = 0
    seed: int = 0
    progress: bool = True


@dataclasses.dataclass
class ModelSpec:
    """A backbone: registry name, facekd / insightface checkpoint or legacy MXNet prefix."""

    name: str = "mobilefacenet"
    kwargs: dict = dataclasses.field(default_factory=dict)
    # "kt": knowledge-transfer initialisation from the teacher (same architecture; Karlekar
    # et al., 2019); the resolution-dependent FC / GDC kernel is re-initialised or resized
    init: Literal["scratch", "kt"] = "scratch"
    init_fc: Literal["reinit", "resize"] = "reinit"


@dataclasses.dataclass
class HeadSpec:
    """Margin head (``facekd.models.HEADS``): arcface / cosface / softmax and its keywords."""

    name: str = "arcface"
    kwargs: dict = dataclasses.field(default_factory=dict)
    init: str | None = None  # a training checkpoint whose head starts this one (fine-tuning)


@dataclasses.dataclass
class TeacherMember:
    """One teacher of an ensemble: a backbone (``model``) or an ONNX file (``onnx``)."""

    model: str | None = None
    onnx: str | None = None
    kwargs: dict = dataclasses.field(default_factory=dict)  # backbone or OnnxTeacher options
    head: str | None = None  # checkpoint with a head, or "fit" (see TeacherSpec.head)


@dataclasses.dataclass
class TeacherSpec:
    """The frozen teacher: one of ``model`` (backbone / checkpoint / legacy MXNet prefix),
    ``onnx`` (black-box ONNX file, ``kwargs`` = ``facekd.teachers.OnnxTeacher`` options) or
    ``ensemble`` (a list of members, METHODS 4.7). None of them: no teacher (a baseline)."""

    model: str | None = None
    onnx: str | None = None
    ensemble: list[TeacherMember] = dataclasses.field(default_factory=list)
    combine: Literal["mean", "concat"] = "mean"  # ensemble embeddings: averaged or joined
    kwargs: dict = dataclasses.field(default_factory=dict)
    # teacher logits (Hinton): a training checkpoint holding a head, or "fit": a head fitted on
    # the frozen teacher embeddings of the training identities (facekd.teachers.fitted_head)
    head: str | None = None
    head_fit: dict = dataclasses.field(default_factory=dict)  # name, kwargs, steps for "fit"
    cache: str | None = None  # directory of precomputed outputs: built if absent
    cache_stages: list[int] = dataclasses.field(default_factory=list)
    cache_dtype: Literal["float16", "float32"] = "float16"
    bf16: bool = (
        False  # online teacher under bf16 autocast (channels_last when train.channels_last)
    )


@dataclasses.dataclass
class LossSpec:
    """One distillation term: ``facekd.losses.LOSSES`` name, weight, keywords; ``key`` names
    the term in logs and checkpoints (default: the name) and tells two terms of the same
    loss apart (e.g. FitNets on two stages). Two terms with the same key are refused."""

    name: str = "embedding"
    weight: float = 1.0
    kwargs: dict = dataclasses.field(default_factory=dict)
    key: str | None = None


@dataclasses.dataclass
class DataSpec:
    """Training data and batching."""

    source: Literal["synthetic", "folder", "recordio"] = "synthetic"
    path: str | None = None  # folder root or directory holding train.rec / train.idx
    identities: int = 64  # synthetic only
    images_per_identity: int = 16  # synthetic only
    image_size: int = 112  # the aligned crop (and the teacher's view)
    student_size: int | None = None  # low-resolution student view (Karlekar et al., 2019)
    # keep labels for identities 0..N-1 only, the rest unlabelled (-1): a transfer set with
    # scarce labels (Hinton et al. 2015; facekd.data.partial_labels); null: all labels
    labelled_identities: int | None = None
    # held-out (dev-split) identities that never reach training, the teacher cache or a fitted
    # head: a list of names (identity folder names for "folder"; integer labels, as ints or
    # strings, for "recordio") or the path of a UTF-8 file with one name per line (blank lines
    # and "#" comments skipped). Names absent from the data are fine (a dev list spans
    # sources); excluding every identity is an error. Folder labels: sorted kept names.
    exclude_identities: list[str | int] | str | None = None
    augment: dict = dataclasses.field(default_factory=lambda: {"flip_p": 0.5})
    sampler: Literal["shuffled", "pk"] = "shuffled"
    batch_size: int = 64  # per rank; for "pk" batches are p * k
    p: int = 16
    k: int = 4
    workers: int = 2
    seed: int = 0


@dataclasses.dataclass
class EvalSpec:
    """Verification during training (every ``train.eval_every`` steps and at the end)."""

    synthetic_pairs: int = 0  # > 0: held-out synthetic identities, this many pairs
    bins: list[str] = dataclasses.field(default_factory=list)  # verification .bin files


@dataclasses.dataclass
class ExperimentConfig:
    """Everything `facekd train` needs; YAML files override only what differs."""

    out_dir: str = "runs/experiment"
    student: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    head: HeadSpec | None = dataclasses.field(default_factory=HeadSpec)
    teacher: TeacherSpec = dataclasses.field(default_factory=TeacherSpec)
    losses: list[LossSpec] = dataclasses.field(default_factory=list)
    ce_weight: float = 1.0
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    train: TrainSettings = dataclasses.field(default_factory=lambda: TrainSettings())
    eval: EvalSpec = dataclasses.field(default_factory=EvalSpec)
