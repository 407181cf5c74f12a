"""From an ``ExperimentConfig`` to a ready ``Trainer``: the glue behind ``facekd train``.

Nothing here knows about distillation methods: losses come from the registry by name, and
what a method needs from the data (a low-resolution student view, P x K batches) is plain data
configuration. Teacher training, baseline students and every distillation run go through
``build_trainer``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from facekd.config import ExperimentConfig, to_dict
from facekd.data.augment import build_transform
from facekd.data.sampler import PKBatchSampler, ShuffledBatchSampler
from facekd.engine.distiller import Distiller, check_logit_scales
from facekd.engine.trainer import seeded
from facekd.losses import DistillLoss, build_loss
from facekd.models import HEADS, build_head
from facekd.models.checkpoints import load_backbone
from facekd.models.heads import CosineHead
from facekd.teachers import build_teacher, check_teacher_serves, teacher_provides
from facekd.teachers.cache import TeacherCache, build_teacher_cache, fingerprint_module

log = logging.getLogger(__name__)


def _augment_spec(cfg: ExperimentConfig, deterministic: bool = False) -> dict:
    spec = dict(cfg.data.augment)
    if cfg.data.student_size is not None:
        spec["low_res_size"] = cfg.data.student_size  # paired views: student low, teacher high
    if deterministic:  # the teacher cache sees each face once, without random changes
        spec = {k: v for k, v in spec.items() if k in ("low_res_size", "interpolation")}
        spec["flip_p"] = 0.0
    return spec


def teacher_view_is_random(transform) -> bool:
    """Whether the *built* training transform changes what the teacher sees beyond a mirror
    image (presets and defaults included): then no cache can stand in for the teacher. A
    transform facekd does not know (a user's callable) counts as random."""
    if transform is None:
        return False
    return bool(getattr(transform, "teacher_view_random", True))


def transform_flips(transform) -> bool:
    """Whether the built training transform mirrors faces (the cache then stores both views)."""
    return float(getattr(transform, "flip_p", 0.0) or 0.0) > 0


def training_dataset(cfg: ExperimentConfig):
    """The training data set with the training transform (augmentation as configured)."""
    return build_dataset(cfg, build_transform(_augment_spec(cfg)))


def build_dataset(cfg: ExperimentConfig, transform):
    dataset = _source_dataset(cfg, transform)
    if cfg.data.labelled_identities is not None:
        from facekd.data.partial_labels import PartialLabels

        dataset = PartialLabels(dataset, cfg.data.labelled_identities)
    return dataset


def _source_dataset(cfg: ExperimentConfig, transform):
    from facekd.data.folder import exclusion_list

    d = cfg.data  # every training-side set (cache, fitted head) comes here: no dev leaks
    exclude = exclusion_list(d.exclude_identities, d.source)
    if d.source == "synthetic":
        from facekd.data.synthetic import SyntheticFaces

        if exclude:
            raise ValueError(
                "data.exclude_identities is set but data.source=synthetic has no named "
                "identities to exclude; use a folder or recordio source or drop the key"
            )
        return SyntheticFaces(
            d.identities, d.images_per_identity, size=d.image_size, seed=d.seed, transform=transform
        )
    if d.path is None:
        raise ValueError(f"data.source={d.source!r} needs data.path")
    if d.source == "folder":
        from facekd.data.folder import ImageFolderDataset

        dataset = ImageFolderDataset(d.path, transform=transform, exclude=exclude)
    else:
        from facekd.data.recordio import RecordIODataset

        dataset = RecordIODataset(d.path, transform=transform, exclude=exclude)
    if exclude:
        found = len(dataset.excluded_identities)
        log.info("data.exclude_identities: %d of %d found, left out", found, len(set(exclude)))
    return dataset


def _batch_sampler(cfg: ExperimentConfig, dataset):
    d = cfg.data
    if d.sampler == "pk":
        return PKBatchSampler(dataset.labels, d.p, d.k, seed=d.seed)
    return ShuffledBatchSampler(len(dataset), d.batch_size, seed=d.seed)


def _saved_head(path: str) -> tuple[dict, dict]:
    """``(state_dict, config["head"])`` of the margin head in a facekd training checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    head_state = ckpt.get("head")
    meta = ckpt.get("config", {}).get("head") or {}
    if head_state is None or not meta:
        raise ValueError(f"{path} holds no margin head; train the model with a head first")
    return head_state, meta


def _init_head(head, spec) -> None:
    """``head.init``: start the student's head from a training checkpoint's (fine-tuning a
    trained student with its own classifier, e.g. "ArcFace continued"); the same head type
    and the same ``(classes, dim)`` weight, else a ``ValueError`` saying which differs."""
    state, meta = _saved_head(spec.init)
    if meta["name"] != spec.name:
        raise ValueError(f"head.init {spec.init}: a {meta['name']} head, this run's is {spec.name}")
    have, want = tuple(state["weight"].shape), tuple(head.weight.shape)
    if have != want:
        raise ValueError(
            f"head.init {spec.init}: head weight (classes, dim) {have}, this run needs {want} "
            "(the same training identities and embedding size)"
        )
    head.load_state_dict(state)


def _teacher_head(path: str):
    """The margin head saved in a facekd training checkpoint (for teacher logits)."""
    head_state, meta = _saved_head(path)
    num_classes, dim = head_state["weight"].shape
    head = build_head(
        meta["name"], num_classes=num_classes, embedding_size=dim, **meta.get("kwargs", {})
    )
    head.load_state_dict(head_state)
    return head.eval()


def _student_logit_scale(cfg: ExperimentConfig) -> float | None:
    """The ``s`` of the configured student head (``None`` without a cosine head)."""
    if cfg.head is None:
        return None
    probe = build_head(cfg.head.name, num_classes=2, embedding_size=2, **cfg.head.kwargs)
    return getattr(probe, "scale", None)


def _fitted_teacher_head(cfg: ExperimentConfig, teacher, cache, dataset):
    """``teacher.head: fit``: a head over the training identities on frozen teacher embeddings
    (``facekd.teachers.fitted_head``), from the cache or one teacher pass over clean images.
    A cosine head takes the student head's scale unless ``head_fit.kwargs.scale`` is set."""
    from facekd.teachers.fitted_head import fit_teacher_head

    spec = cfg.teacher.head_fit
    unknown = sorted(set(spec) - {"name", "kwargs", "steps"})
    if unknown:  # before any teacher pass
        raise ValueError(f"teacher.head_fit: unknown key(s) {unknown}; valid: name, kwargs, steps")
    name = spec.get("name", "arcface")
    kwargs = dict(spec.get("kwargs", {}))
    scale = _student_logit_scale(cfg)
    if scale is not None and issubclass(HEADS.get(name, object), CosineHead):
        kwargs.setdefault("scale", scale)
    if cache is not None:
        embeddings = cache.arrays["embedding"]
    elif teacher is not None:
        from facekd.evaluation.embed import dataset_embeddings

        clean = build_dataset(cfg, build_transform(_augment_spec(cfg, deterministic=True)))
        embeddings = torch.from_numpy(
            dataset_embeddings(teacher, clean, progress=cfg.train.progress)
        )  # one pass per teacher (per ensemble member): minutes on a real data set
    else:
        raise ValueError("teacher.head: fit needs a teacher (or a teacher cache)")
    return fit_teacher_head(
        embeddings,
        dataset.labels,
        name=name,
        kwargs=kwargs,
        num_classes=dataset.num_classes,
        steps=int(spec.get("steps", 300)),
    )


def build_losses(cfg: ExperimentConfig) -> tuple[dict, dict]:
    """``({key: loss}, {key: weight})`` from ``cfg.losses``; duplicate keys and losses whose
    batches the sampler cannot give are refused before anything is built or cached."""
    keys = [spec.key or spec.name for spec in cfg.losses]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(
            f"losses {twice} are configured more than once; one would silently replace the "
            "other. Give each term its own `key` (e.g. key: fitnets_stage2)"
        )
    pairs = list(zip(keys, cfg.losses, strict=True))
    losses = {k: build_loss(spec.name, **spec.kwargs) for k, spec in pairs}
    for key, loss in losses.items():
        if loss.needs_pk and cfg.data.sampler != "pk":
            raise ValueError(
                f"loss {key!r} mines triplets within identities and needs P x K batches: set "
                f"data.sampler: pk (with data.p identities x data.k images; now "
                f"{cfg.data.sampler!r}, whose batches hold few same-identity pairs)"
            )
    weights = {k: spec.weight for k, spec in pairs}
    return losses, weights


def _teacher_cache(cfg, teacher, dataset, hinton_T: float):
    """The teacher cache when the training transform allows one (else ``None``, logged)."""
    t = cfg.teacher
    transform = getattr(dataset, "transform", None)
    if teacher_view_is_random(transform):
        log.warning(
            "the augmentation %r changes the teacher's input beyond a mirror image: running "
            "the teacher online, the cache at %s is not used",
            transform,
            t.cache,
        )
        return None
    clean = build_dataset(cfg, build_transform(_augment_spec(cfg, deterministic=True)))
    # The teacher always sees the data.image_size view (the high-resolution one when the student
    # is fed smaller faces), so the student's side is not part of the key: one cache serves
    # students at every side.
    preprocessing = f"size={cfg.data.image_size};rgb[-1,1]"
    if "logits" in teacher_provides(teacher):  # ensembles average at this temperature
        preprocessing += f";T={hinton_T}"
    cache = build_teacher_cache(
        teacher,
        clean,
        t.cache,
        preprocessing,
        stages=tuple(t.cache_stages),
        dtype=t.cache_dtype,
        num_workers=cfg.data.workers,
        flip=transform_flips(transform),
    )
    log.info("teacher outputs come from the cache at %s", t.cache)
    return cache


def build_distiller(cfg: ExperimentConfig, dataset) -> Distiller:
    """Student, head, losses, teacher (or its cache) for ``cfg``; ``dataset`` is the training
    data set *with its training transform*, which decides whether a cache can stand in.

    The student and its head are built under ``seeded(cfg.train.seed)`` and the teacher under
    its own seed, so at one seed the scratch student and every distilled student start from
    bit-identical weights, whatever the teacher or the losses draw.
    """
    t = cfg.teacher
    losses, weights = build_losses(cfg)
    hinton_T = next((float(s.kwargs.get("T", 4.0)) for s in cfg.losses if s.name == "hinton"), 4.0)

    def member_head(member, option: str):  # ensembles: each member's own head (METHODS 4.7)
        if option == "fit":
            return _fitted_teacher_head(cfg, member, None, dataset)
        return _teacher_head(option)

    with seeded(cfg.train.seed + 7_919):  # apart from the student's stream
        teacher = build_teacher(t, head_for=member_head, T=hinton_T)
    wanted = {}
    for loss in losses.values():
        wanted.update(loss.student_kwargs())
    size = {"input_size": cfg.data.student_size or cfg.data.image_size, **wanted}
    size.update(cfg.student.kwargs)  # the config has the last word
    with seeded(cfg.train.seed):
        if cfg.student.init == "kt":
            if teacher is None or not t.model:
                raise ValueError(
                    "student.init=kt needs teacher.model (a backbone whose weights to transfer)"
                )
            from facekd.models.transfer import build_kt_student

            student, report = build_kt_student(teacher, fc=cfg.student.init_fc, **size)
            log.info("KT initialisation: %s", report)
        else:
            student = load_backbone(cfg.student.name, **size)
        head = None
        if cfg.head is not None:
            head = build_head(
                cfg.head.name,
                num_classes=dataset.num_classes,
                embedding_size=student.num_features,
                **cfg.head.kwargs,
            )
            if cfg.head.init:
                _init_head(head, cfg.head)
    student.train()
    if teacher is not None and losses:  # refuse before any caching or training
        check_teacher_serves(teacher, losses, has_head=bool(t.head))
        if any(type(x).check_teacher is not DistillLoss.check_teacher for x in losses.values()):
            fingerprint = fingerprint_module(teacher)
            for loss in losses.values():
                loss.check_teacher(fingerprint)
    cache = None
    if teacher is not None and t.cache and losses:
        cache = _teacher_cache(cfg, teacher, dataset, hinton_T)
    teacher_head = None
    if t.head == "fit":
        teacher_head = _fitted_teacher_head(cfg, teacher, cache, dataset)
    elif t.head:
        teacher_head = _teacher_head(t.head)
    if "logits" in frozenset().union(*(x.requires for x in losses.values())):
        check_logit_scales(head, teacher, teacher_head)  # ensemble member heads included
    return Distiller(
        student,
        head=head,
        losses=losses,
        weights=weights,
        teacher=None if cache else teacher,
        teacher_head=teacher_head,
        teacher_cache=cache,
        ce_weight=cfg.ce_weight,
        teacher_bf16=t.bf16,
    )


def build_evaluator(cfg: ExperimentConfig):
    """``f(student) -> {"<set>/acc": ..., "<set>/acc_exact": ..., "<set>/auc": ...}`` over the
    configured verification sets (insightface 10-fold protocol), or ``None`` when none is
    configured. ``acc`` uses insightface's threshold grid (what published tables report),
    ``acc_exact`` the exact search (``facekd.evaluation.verification.THRESHOLD_SEARCH``).

    Low-resolution students see the faces down-sampled to their input size (``degrade_to``).
    """
    from facekd.data.set_manifest import load_set
    from facekd.evaluation.bench import all_pairs_cells
    from facekd.evaluation.embed import extract_embeddings
    from facekd.evaluation.verification import verify

    sets = [load_set(path) for path in cfg.eval.bins]
    if cfg.eval.synthetic_pairs:
        from facekd.data.synthetic import synthetic_pairset

        sets.append(
            synthetic_pairset(
                cfg.eval.synthetic_pairs, size=cfg.data.image_size, seed=cfg.data.seed
            )
        )
    if not sets:
        return None

    def evaluate(student) -> dict[str, float]:
        metrics = {}
        for ps in sets:
            degrade = student.input_size if student.input_size < cfg.data.image_size else None
            emb = extract_embeddings(
                student, ps.images, batch_size=64, degrade_to=degrade, progress=False
            )
            folds = ps.folds if (ps.folds >= 0).all() else None
            pairs = (emb[ps.pairs[:, 0]], emb[ps.pairs[:, 1]])
            grid = verify(pairs, ps.issame, folds=folds, thresholds="grid")
            exact = verify(pairs, ps.issame, folds=folds, thresholds="exact")
            metrics[f"{ps.name}/acc"] = grid.accuracy
            metrics[f"{ps.name}/acc_exact"] = exact.accuracy
            metrics[f"{ps.name}/auc"] = grid.auc
            metrics |= all_pairs_cells(emb, ps, sep="/")  # sets that know their identities
        return metrics

    return evaluate


def build_trainer(cfg: ExperimentConfig, evaluate=None):
    from facekd.engine.trainer import Trainer, seed_everything
    from facekd.runtime import dist

    dist.init_from_env()  # before the samplers: they split batches by rank (torchrun only)
    seed_everything(cfg.train.seed)  # identical initial weights on every rank and every rerun
    evaluate = evaluate or build_evaluator(cfg)
    dataset = training_dataset(cfg)
    distiller = build_distiller(cfg, dataset)
    out_dir = Path(cfg.out_dir)
    return Trainer(
        distiller,
        dataset,
        _batch_sampler(cfg, dataset),
        cfg.train,
        out_dir,
        evaluate=evaluate,
        config=to_dict(cfg),
        num_workers=cfg.data.workers,
    )


__all__ = [
    "TeacherCache",
    "build_dataset",
    "build_distiller",
    "build_losses",
    "build_trainer",
    "seeded",
    "teacher_view_is_random",
    "training_dataset",
    "transform_flips",
]
