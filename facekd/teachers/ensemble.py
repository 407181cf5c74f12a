"""Teacher ensembles (Hinton et al. 2015; Luo et al. 2016), combined as METHODS 4.7 says.

Hinton averages the tempered class probabilities of ``t`` models,
``q = (1/t) sum_k softmax(z_k / T)``; Luo's best student learns from an ensemble of DeepID2+
networks. ``TeacherEnsemble(members, combine, heads, T)`` is one teacher to the rest of
facekd (``forward_features(x) -> ModelOutput``), so the cache stores the combined output and
an ensemble costs nothing extra once cached. Per output type:

* ``embedding``: every member's embedding is L2-normalised, then ``combine="mean"`` averages
  them (all members must share D; the mean is *not* re-normalised, so its norm carries the
  members' agreement) or ``combine="concat"`` concatenates them, ``(B, sum_k D_k)`` (for
  neuron selection over the joint top layer, Luo 2016);
* ``pooled``: the same rule when every member gives one (else none);
* ``logits`` (when every member has a head): the averaged probabilities, written as logits
  ``z = T * log((1/t) sum_k softmax(z_k / T))`` so that ``softmax(z / T)`` *is* Hinton's
  average; ``T`` must be the Hinton loss's temperature (the builder passes it);
* ``stages``: none (members' maps differ in shape and meaning): stage methods refuse.

Members may be any mix of facekd backbones, checkpoints and ONNX teachers; each sees the same
input ``(B, 3, S, S)``. ``fingerprint()`` combines the members', the heads' and the rule's.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from facekd.types import ModelOutput

COMBINES = ("mean", "concat")


def _fingerprint(module: nn.Module) -> str:
    from facekd.teachers.fingerprint import fingerprint_module

    return fingerprint_module(module)


def average_probabilities_as_logits(logits: list[torch.Tensor], T: float) -> torch.Tensor:
    """``T * log(mean_k softmax(z_k / T))``: logits whose tempered softmax is the average."""
    log_probs = torch.stack([F.log_softmax(z.float() / T, dim=1) for z in logits])
    return T * (torch.logsumexp(log_probs, dim=0) - math.log(len(logits)))


@torch.no_grad()
def check_combinable(members, combine: str) -> None:
    """Refuse ``combine="mean"`` over members of different embedding sizes *before* anything
    costly (fitting heads, caching): one probe face through each member."""
    if combine != "mean":
        return
    sizes = {getattr(m, "input_size", None) for m in members} - {None}
    side = sizes.pop() if len(sizes) == 1 else 112
    x = torch.zeros(1, 3, side, side)
    dims = [int(m.eval().forward_features(x).embedding.flatten(1).shape[1]) for m in members]
    if len(set(dims)) > 1:
        raise ValueError(
            f"combine='mean' needs members with equal embedding sizes, got {dims}; use "
            "combine='concat' (Hinton reads only the averaged probabilities, so either works)"
        )


class TeacherEnsemble(nn.Module):
    """See the module docstring.

    Args:
        members: two or more teachers with ``forward_features``.
        combine: ``"mean"`` (default) or ``"concat"`` for embeddings and pooled features.
        heads: optional, one head per member (``head(embedding).logits``), for logits.
        T: temperature at which probabilities are averaged (Hinton's; default 4).
    """

    def __init__(self, members, combine: str = "mean", heads=None, T: float = 4.0) -> None:
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 teachers, got {len(members)}")
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        if heads is not None and len(heads) != len(members):
            raise ValueError(f"{len(heads)} heads for {len(members)} ensemble members")
        if not T > 0:
            raise ValueError(f"T must be > 0, got {T}")
        # plain lists, not ModuleLists: frozen teachers stay out of any optimizer / state_dict
        self.__dict__["members"] = members
        self.__dict__["heads"] = list(heads) if heads is not None else None
        self.combine, self.T = combine, float(T)
        every = {"embedding", "pooled"}
        provides = set.intersection(*(set(getattr(m, "provides", every)) for m in members))
        provides.discard("stages")
        if self.heads is not None:
            provides.add("logits")
        self.provides = frozenset(provides)
        sizes = {getattr(m, "input_size", None) for m in members} - {None}
        if len(sizes) > 1:
            raise ValueError(f"ensemble members take different input sizes {sorted(sizes)}")
        self.input_size = sizes.pop() if sizes else None

    def eval(self):  # members are frozen and always in eval mode
        for m in self.members:
            m.eval()
        return super().eval()

    def to(self, *args, **kwargs):
        for m in self.members:
            m.to(*args, **kwargs)
        for h in self.heads or []:
            h.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"ensemble:{self.combine}:T={self.T}".encode())
        for m in self.members:
            h.update(_fingerprint(m).encode())
        for head in self.heads or []:
            h.update(_fingerprint(head).encode())
        return h.hexdigest()

    def _combine(self, tensors: list[torch.Tensor], what: str) -> torch.Tensor:
        normed = [F.normalize(t.float().flatten(1), dim=1) for t in tensors]
        if self.combine == "concat":
            return torch.cat(normed, dim=1)
        dims = {t.shape[1] for t in normed}
        if len(dims) > 1:
            raise ValueError(
                f"combine='mean' needs members with equal {what} sizes, got {sorted(dims)}; "
                "use combine='concat'"
            )
        return torch.stack(normed).mean(0)

    @torch.no_grad()
    def forward_features(self, x: torch.Tensor) -> ModelOutput:
        outs = [m.forward_features(x) for m in self.members]
        pooled = None
        if all(o.pooled is not None for o in outs):
            pooled = self._combine([o.pooled for o in outs], "pooled")
        out = ModelOutput(
            embedding=self._combine([o.embedding for o in outs], "embedding"),
            stages=[],
            pooled=pooled,
        )
        if self.heads is not None:
            member_logits = [
                h(o.embedding.float()).logits for h, o in zip(self.heads, outs, strict=True)
            ]
            out.logits = average_probabilities_as_logits(member_logits, self.T)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).embedding

    def extra_repr(self) -> str:
        return f"{len(self.members)} members, combine={self.combine}, T={self.T}"
