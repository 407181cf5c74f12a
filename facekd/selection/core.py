"""``select_neurons``: pick the K teacher neurons the student will regress (METHODS.md §1.5).

Luo, Zhu, Liu, Wang, Tang, "Face Model Compression by Distilling Knowledge from Neurons",
AAAI 2016. The paper selects top-layer teacher neurons by MAP inference in a fully-connected
binary MRF whose unary term rewards attribute discriminativeness; its exact potentials are not
verified, so facekd implements METHODS.md §1.5 [OURS], one term per observation of the paper:

    Phi_i(1) = -(s_IA_i - mu s_NA_i) + gamma (1 - rho_i) + b,   Phi_i(0) = 0
    Psi_ij(1, 1) = |corr(a_i, a_j)|, weighted by lam

1. IA-selective neurons are rewarded (``s_IA``), 2. NA-selective / mixed neurons penalised
(``mu s_NA``), 3. inhibitive neurons penalised (``gamma (1 - rho)``); the pairwise term
discourages redundant neurons. ``s_IA``/``s_NA`` come from attribute labels (``attributes``
mode) or, without them, from identity statistics (``identity_fallback`` mode, §1.6 [OURS]).
See ``facekd.selection.statistics`` for the scores and ``facekd.selection.solver`` for the
mean-field solver, the bisection that hits K exactly, and the checked descent property.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np

from facekd.selection.attributes import CELEBA_ATTRIBUTES, validate_split
from facekd.selection.solver import descent_guaranteed, solve_k
from facekd.selection.statistics import (
    abs_correlation,
    attribute_scores,
    identity_scores,
    inhibition_rate,
)

log = logging.getLogger(__name__)

FORMAT = "facekd.neuron_selection/1"
MODES = ("attributes", "identity_fallback")
#: K / D of the released MobileID student (422 of 512) [V: mobile-id prototxt; ratio OURS]
K_RATIO = 0.824
_ARRAYS = ("indices", "q", "s_ia", "s_na", "rho")


@dataclass(eq=False)
class NeuronSelection:
    """The result of ``select_neurons``, saved as ``selection.json``.

    ``indices`` ``(K,)`` sorted int64 teacher-neuron indices; ``q`` ``(D,)`` mean-field
    marginals at the final bias; ``s_ia``, ``s_na``, ``rho`` ``(D,)`` the unary statistics;
    ``hyper`` the energy/solver settings (lam resolved); ``bias`` the b found by bisection;
    ``sweeps`` mean-field sweeps of the final run; ``data_hash`` sha256 of the inputs;
    ``diagnostics`` (convergence, exactness of K, free-energy history, skipped attributes);
    ``meta`` free-form provenance (teacher fingerprint, data set, attribute file).
    """

    indices: np.ndarray
    q: np.ndarray
    s_ia: np.ndarray
    s_na: np.ndarray
    rho: np.ndarray
    mode: str
    k: int
    hyper: dict
    bias: float
    sweeps: int
    data_hash: str
    num_samples: int
    ia_names: list[str] = field(default_factory=list)
    na_names: list[str] = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64)
        for name in _ARRAYS[1:]:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        d = self.q.shape[0]
        if any(getattr(self, n).shape != (d,) for n in _ARRAYS[1:]):
            raise ValueError("q, s_ia, s_na and rho must all have shape (D,)")
        idx = self.indices
        if idx.shape != (self.k,) or (idx.size and (idx[0] < 0 or idx[-1] >= d)):
            raise ValueError(f"indices must be {self.k} neuron indices in [0, {d})")
        if np.any(np.diff(idx) <= 0):
            raise ValueError("indices must be sorted and unique")
        if self.mode not in MODES:
            raise ValueError(f"unknown selection mode {self.mode!r}; valid: {MODES}")

    @property
    def dim(self) -> int:
        """D, the teacher embedding dimension."""
        return int(self.q.shape[0])

    @property
    def mask(self) -> np.ndarray:
        """``(D,)`` bool, True for selected neurons."""
        m = np.zeros(self.dim, dtype=bool)
        m[self.indices] = True
        return m

    def to_dict(self) -> dict:
        out = {"format": FORMAT, "dim": self.dim}
        for name, value in self.__dict__.items():
            out[name] = value.tolist() if isinstance(value, np.ndarray) else value
        hist, _ = np.histogram(self.q, bins=10, range=(0.0, 1.0))
        out["summary"] = {  # derived, for reading the file; ignored by from_dict
            "q_histogram_0_to_1_10_bins": hist.tolist(),
            "selected_mean": {n: float(getattr(self, n)[self.mask].mean()) for n in _ARRAYS[2:]},
        }
        return out

    @classmethod
    def from_dict(cls, data: dict) -> NeuronSelection:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a neuron selection (format {data.get('format')!r})")
        names = [f for f in cls.__dataclass_fields__]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"neuron selection is missing fields {missing}")
        sel = cls(**{n: data[n] for n in names})
        if sel.dim != data["dim"]:
            raise ValueError(f"neuron selection says dim={data['dim']} but q has {sel.dim}")
        return sel

    def to_json(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> NeuronSelection:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def _real(name: str, v, lo: float, hi: float = math.inf, open_lo=False, open_hi=False) -> float:
    ok = isinstance(v, Real) and not isinstance(v, bool) and not math.isnan(v)
    ok = ok and (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)
    if not ok:
        span = f"{'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"
        raise ValueError(f"{name} must be a number in {span}, got {v!r}")
    return float(v)


def _int(name: str, v, lo: int, hi: float = math.inf) -> int:
    if not isinstance(v, Integral) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


def _attribute_inputs(attributes, attribute_names, ia_names, na_names, n: int):
    labels = np.asarray(attributes)
    if labels.ndim != 2 or labels.shape[0] != n:
        raise ValueError(f"attributes must have shape (N={n}, A), got {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("attributes must be binary {0, 1} (map -1/1 labels with `a > 0`)")
    if attribute_names is None:
        if labels.shape[1] != len(CELEBA_ATTRIBUTES):
            raise ValueError("attribute_names is required unless attributes has the 40 columns")
        attribute_names = CELEBA_ATTRIBUTES
    names = list(attribute_names)
    if len(names) != labels.shape[1] or len(set(names)) != len(names):
        raise ValueError(f"attribute_names must name the {labels.shape[1]} columns once each")
    groups = []
    for given, group in zip((ia_names, na_names), validate_split(ia_names, na_names), strict=True):
        absent = [g for g in group if g not in names]
        if absent and given is not None:
            raise ValueError(f"attributes {absent} are not among the attribute columns {names}")
        groups.append([g for g in group if g in names])  # a default group keeps what exists
    if not groups[0]:
        raise ValueError(f"none of the IA attributes is among the columns {names}")
    return labels.astype(bool), names, groups[0], groups[1]


def _group_mean(scores, usable, cols, group: str, skipped: list[str], names) -> np.ndarray:
    skipped.extend(names[c] for c in cols if not usable[c])
    keep = [c for c in cols if usable[c]]
    if not keep and group == "IA":
        raise ValueError("no IA attribute has both classes in the train and held-out splits")
    return scores[keep].mean(0) if keep else np.zeros(scores.shape[1])


def _activations(activations) -> np.ndarray:
    """``(N, D)`` float64 activations, checked: finite, ``N >= 4``, ``D >= 1``."""
    a = np.asarray(activations, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 4 or a.shape[1] < 1 or not np.isfinite(a).all():
        raise ValueError(f"activations must be finite (N >= 4, D >= 1), got {a.shape}")
    return a


def _hyper(d: int, mu, gamma, lam, tau, eps, damping, max_sweeps, tol, holdout, seed) -> dict:
    """The energy and solver settings, each checked (``select_neurons`` documents them), with
    ``lam`` resolved to ``1 / D`` when None; ``signed`` is added by the caller."""
    return {
        "mu": _real("mu", mu, 0.0),
        "gamma": _real("gamma", gamma, 0.0),
        "lam": _real("lam", 1.0 / d if lam is None else lam, 0.0),
        "tau": _real("tau", tau, 0.0, open_lo=True),
        "eps": _real("eps", eps, 0.0),
        "damping": _real("damping", damping, 0.0, 1.0, open_lo=True),
        "max_sweeps": _int("max_sweeps", max_sweeps, 1),
        "tol": _real("tol", tol, 0.0, open_lo=True),
        "holdout": _real("holdout", holdout, 0.0, 1.0, open_lo=True, open_hi=True),
        "seed": _int("seed", seed, 0),
    }


def _resolve_mode(mode: str | None, attributes, identity_labels) -> str:
    """``mode`` checked; None picks ``attributes`` when they are given, else the fallback."""
    if mode is None:
        if attributes is None and identity_labels is None:
            raise ValueError("give attributes (attributes mode) or identity_labels (fallback)")
        mode = "attributes" if attributes is not None else "identity_fallback"
    if mode not in MODES:
        raise ValueError(f"unknown selection mode {mode!r}; valid: {MODES}")
    return mode


def _resolve_signed(signed: bool | None, a: np.ndarray) -> bool:
    """The inhibition measure: ``signed`` as given, or by default signed iff any activation is
    negative (a BN embedding such as iResNet's ``features``)."""
    if signed is None:
        return bool((a < 0).any())
    if not isinstance(signed, bool):
        raise ValueError(f"signed must be True, False or None, got {signed!r}")
    return signed


def _attribute_statistics(a, attributes, attribute_names, ia_names, na_names, hyper, digest):
    """Attributes mode: ``(s_ia, s_na, IA names, NA names, skipped attributes)``; ``s_ia`` /
    ``s_na`` ``(D,)`` are the mean held-out scores of the usable IA / NA attributes (those with
    both classes in both splits). The names and labels are added to ``digest``."""
    if attributes is None:
        raise ValueError("mode='attributes' needs attributes")
    labels, names, ia, na = _attribute_inputs(
        attributes, attribute_names, ia_names, na_names, a.shape[0]
    )
    cols = [names.index(x) for x in ia + na]
    usable, scores = attribute_scores(a, labels[:, cols], hyper["holdout"], hyper["seed"])
    picked, skipped = [names[c] for c in cols], []
    s_ia = _group_mean(scores, usable, range(len(ia)), "IA", skipped, picked)
    s_na = _group_mean(scores, usable, range(len(ia), len(cols)), "NA", skipped, picked)
    digest.update(json.dumps(names).encode() + np.packbits(labels).tobytes())
    return s_ia, s_na, ia, na, skipped


def _identity_statistics(a, identity_labels, digest):
    """Identity fallback: ``(s_ia, s_na, [], [], [])`` from identity statistics
    (``statistics.identity_scores``); the labels are added to ``digest``."""
    if identity_labels is None:
        raise ValueError("mode='identity_fallback' needs identity_labels")
    n = a.shape[0]
    ids = np.asarray(identity_labels)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"identity_labels must be (N={n},) integers, got {ids.shape}")
    stats = identity_scores(a, ids)
    digest.update(ids.astype(np.int64).tobytes())
    return stats["s_ia"], stats["s_na"], [], [], []


def _diagnose(res, w: np.ndarray, hyper: dict, k: int, skipped: list[str], mode: str) -> dict:
    """What the solver run says about itself (stored with the selection). Logs a warning when
    it did not converge or free-energy descent is unproven, a note when K was not hit exactly,
    and a summary line (K of D, bias, histogram of the marginals q)."""
    diagnostics = {
        "converged": res.converged,
        "exact_k": res.exact,
        "bisection_steps": res.bisection_steps,
        "descent_guaranteed": descent_guaranteed(w, hyper["lam"], hyper["damping"]),
        "free_energy": res.free_energy,
        "skipped_attributes": skipped,
    }
    if not res.converged:
        log.warning("mean field did not converge in %d sweeps", hyper["max_sweeps"])
    if not diagnostics["descent_guaranteed"]:
        log.warning("lam * lambda_max(W) may exceed 4(2-eta)/eta: free-energy descent unproven")
    if not res.exact:
        log.info("no bias selects exactly K=%d (tied neurons): K largest q taken", k)
    hist, _ = np.histogram(res.q, bins=10, range=(0.0, 1.0))
    log.info("neuron selection (%s): K=%d of D=%d, b=%.4g, q histogram %s", mode, k, w.shape[0],
             res.bias, hist.tolist())  # fmt: skip
    return diagnostics


def select_neurons(
    activations,
    *,
    k: int | None = None,
    attributes=None,
    attribute_names: list[str] | None = None,
    ia_names: list[str] | None = None,
    na_names: list[str] | None = None,
    identity_labels=None,
    mode: str | None = None,
    mu: float = 1.0,
    gamma: float = 1.0,
    lam: float | None = None,
    tau: float = 0.1,
    eps: float = 1e-6,
    damping: float = 0.5,
    max_sweeps: int = 100,
    tol: float = 1e-5,
    signed: bool | None = None,
    holdout: float = 0.3,
    seed: int = 0,
) -> NeuronSelection:
    """Select K of the D teacher neurons (module docstring; METHODS.md §1.5-1.6).

    Args:
        activations: ``(N, D)`` teacher top-layer activations of the selection images.
        k: number of neurons; default ``round(0.824 D)`` (422 for D = 512, the MobileID K).
        attributes: ``(N, A)`` binary {0, 1} labels -> ``attributes`` mode.
        attribute_names: the A column names (default: CelebA's 40 when A = 40).
        ia_names, na_names: the IA/NA split (default: METHODS §1.5 [OURS]); CelebA names,
            disjoint. Explicit names must be columns; default names absent from the columns
            are dropped (recorded in ``ia_names``/``na_names`` of the result).
        identity_labels: ``(N,)`` identity ids -> ``identity_fallback`` mode (§1.6 [OURS]).
        mode: ``"attributes"`` | ``"identity_fallback"``; default: attributes if given.
        mu, gamma: weights of the NA and inhibition penalties (default 1, 1) [OURS].
        lam: pairwise weight, default ``1 / D`` [OURS].
        tau: relative-std threshold of the signed inhibition measure (default 0.1) [OURS].
        eps: firing threshold of the ReLU inhibition measure (default 1e-6) [OURS].
        damping, max_sweeps, tol: mean field (0.5, 100, 1e-5) [OURS].
        signed: inhibition measure; default: signed iff any activation is negative (a BN
            embedding such as iResNet's ``features``) [OURS].
        holdout: held-out fraction for the attribute accuracies (default 0.3) [OURS].
        seed: seed of the train/held-out split (the only randomness).
    """
    a = _activations(activations)
    n, d = a.shape
    k = _int("k", round(K_RATIO * d) if k is None else k, 1, d)
    hyper = _hyper(d, mu, gamma, lam, tau, eps, damping, max_sweeps, tol, holdout, seed)
    mode = _resolve_mode(mode, attributes, identity_labels)
    hyper["signed"] = signed = _resolve_signed(signed, a)
    digest = hashlib.sha256(f"{mode}:{a.shape}".encode() + np.ascontiguousarray(a).tobytes())
    if mode == "attributes":
        s_ia, s_na, ia, na, skipped = _attribute_statistics(
            a, attributes, attribute_names, ia_names, na_names, hyper, digest
        )
    else:
        s_ia, s_na, ia, na, skipped = _identity_statistics(a, identity_labels, digest)
    rho = inhibition_rate(a, signed, hyper["eps"], hyper["tau"])
    w = abs_correlation(a)
    unary = -(s_ia - hyper["mu"] * s_na) + hyper["gamma"] * (1.0 - rho)
    res = solve_k(unary, w, hyper["lam"], k, hyper["damping"], hyper["max_sweeps"], hyper["tol"])
    diagnostics = _diagnose(res, w, hyper, k, skipped, mode)
    return NeuronSelection(
        indices=res.indices,
        q=res.q,
        s_ia=s_ia,
        s_na=s_na,
        rho=rho,
        mode=mode,
        k=k,
        hyper=hyper,
        bias=res.bias,
        sweeps=res.sweeps,
        data_hash=digest.hexdigest(),
        num_samples=n,
        ia_names=list(ia),
        na_names=list(na),
        diagnostics=diagnostics,
        meta={},
    )
