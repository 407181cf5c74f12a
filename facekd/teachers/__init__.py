"""Teachers from what users hold: facekd / InsightFace backbones, ONNX files, ensembles.

``build_teacher(spec)`` turns a config's ``TeacherSpec`` into one frozen module with
``forward_features``:

* ``model``: anything ``facekd.models.checkpoints.load_backbone`` reads (a white box: every
  method works);
* ``onnx``: ``OnnxTeacher`` (a black box: embedding, and pooled when its tensor is named);
* ``ensemble``: ``TeacherEnsemble`` of members of either kind (METHODS 4.7).

``fit_teacher_head`` (``teacher.head: fit``) gives a teacher without a classifier the logits
Hinton KD needs, over the student's training identities.

``check_teacher_serves`` says, before any training or caching, when a teacher cannot serve
the configured losses (e.g. FitNets with an ONNX teacher: no stage maps).
"""

from __future__ import annotations

from facekd.models.onnx_runtime import OnnxTeacher, OnnxTeacherError
from facekd.teachers.ensemble import (
    TeacherEnsemble,
    average_probabilities_as_logits,
    check_combinable,
)
from facekd.teachers.fitted_head import fit_teacher_head

ALL_OUTPUTS = frozenset({"embedding", "pooled", "stages"})


def teacher_provides(teacher) -> frozenset:
    """What ``teacher.forward_features`` fills: backbones everything, black boxes less."""
    return frozenset(getattr(teacher, "provides", ALL_OUTPUTS))


def check_teacher_serves(teacher, losses: dict, has_head: bool = False) -> None:
    """Raise ``ValueError`` naming each loss whose inputs this teacher cannot give."""
    provides = teacher_provides(teacher)
    if has_head:
        provides |= {"logits"}
    unserved = {
        name: sorted(set(loss.requires) - provides)
        for name, loss in losses.items()
        if set(loss.requires) - provides
    }
    if unserved:
        kind = type(teacher).__name__
        raise ValueError(
            f"the teacher ({kind}) gives only {sorted(provides)}, but losses need more: "
            f"{unserved}. Stage maps need a white-box backbone (a checkpoint, not an ONNX file "
            "or an ensemble); pooled features from an ONNX file need "
            "teacher.kwargs.pooled_output; logits need teacher.head (a checkpoint or 'fit')"
        )


def _member(model: str | None, onnx: str | None, kwargs: dict, where: str):
    if (model is None) == (onnx is None):
        raise ValueError(f"{where}: give exactly one of model and onnx")
    if onnx is not None:
        return OnnxTeacher(onnx, **kwargs)
    from facekd.models.checkpoints import load_backbone

    return load_backbone(model, **kwargs)


def build_teacher(spec, head_for=None, T: float = 4.0):
    """The teacher module of a ``TeacherSpec``, or ``None`` when there is no teacher.

    ``head_for(member, head_option)`` returns an ensemble member's head (the experiment
    builder fits or loads it), called for members whose ``head`` is set; a single teacher's
    ``spec.head`` is left to the caller (a head fitted from the teacher cache is cheaper).
    ``T``: the Hinton temperature at which an ensemble averages its members' probabilities.
    """
    given = [k for k in ("model", "onnx", "ensemble") if getattr(spec, k)]
    if len(given) > 1:
        raise ValueError(f"teacher: give one of model, onnx, ensemble (got {given})")
    if not given:
        return None
    if not spec.ensemble:
        # a single teacher's head is the caller's: "fit" can then use the teacher cache
        return _member(spec.model, spec.onnx, spec.kwargs, "teacher")
    if spec.kwargs or spec.head:
        raise ValueError(
            "teacher.kwargs / teacher.head do not apply to an ensemble: set them per member "
            "(teacher.ensemble[i].kwargs / .head)"
        )
    members = [
        _member(m.model, m.onnx, m.kwargs, f"teacher.ensemble[{i}]")
        for i, m in enumerate(spec.ensemble)
    ]
    check_combinable(members, spec.combine)  # before heads are fitted
    with_heads = [m.head is not None for m in spec.ensemble]
    if any(with_heads) and not all(with_heads):
        raise ValueError("teacher.ensemble: give a head to every member or to none")
    heads = None
    if all(with_heads) and head_for is not None:
        heads = [head_for(t, m.head) for t, m in zip(members, spec.ensemble, strict=True)]
    return TeacherEnsemble(members, combine=spec.combine, heads=heads, T=T)


__all__ = [
    "OnnxTeacher",
    "OnnxTeacherError",
    "TeacherEnsemble",
    "average_probabilities_as_logits",
    "build_teacher",
    "check_teacher_serves",
    "fit_teacher_head",
    "teacher_provides",
]
