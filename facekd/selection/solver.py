"""Mean-field MAP inference for the neuron-selection MRF, and exact K by bisection.

Luo, Zhu, Liu, Wang, Tang, "Face Model Compression by Distilling Knowledge from Neurons",
AAAI 2016: selection is MAP inference in a fully-connected binary MRF, solved approximately
by mean field. The potentials are facekd's formulation (METHODS.md §1.5 [OURS]):

    E(y) = sum_i y_i (u_i + b) + lam sum_{i<j} W_ij y_i y_j,     y in {0, 1}^D
    u_i  = -(s_IA_i - mu s_NA_i) + gamma (1 - rho_i),            W_ij = |corr(a_i, a_j)|

Mean field for P(y) ~ exp(-E(y)) with a factorised q_i = P(y_i = 1): init
``q = sigmoid(-(u + b))``, then damped *parallel* sweeps

    q <- (1 - eta) q + eta sigmoid(-(u + b) - lam W q)

until ``max |dq| < tol`` or ``max_sweeps``; ``y_i = 1[q_i > 0.5]``.

Checked property (tests): the mean-field free energy

    F(q) = sum_i q_i (u_i + b) + (lam / 2) q^T W q + sum_i [q_i log q_i + (1-q_i) log(1-q_i)]

never increases along the damped parallel sweeps when ``lam * lambda_max(W) <= 4 (2-eta)/eta``
(12 for eta = 0.5). Proof: the sweep target ``q*`` minimises the convex surrogate
``S(p) = (u + b + lam W q) . p - H(p)``, which is 4-strongly convex because the negative
entropy has curvature ``1 / (p (1-p)) >= 4``; hence for ``q' = q + eta (q* - q)``,
``S(q') - S(q) <= -2 eta (2 - eta) |q* - q|^2``, and
``F(q') - F(q) = S(q') - S(q) + (lam/2) eta^2 (q*-q)^T W (q*-q)``. The default lam = 1/D with
``|c_ij| <= 1`` gives ``lam lambda_max(W) < 1``, so the guarantee always holds there. Undamped
parallel updates (eta = 1) can oscillate when the bound fails; sequential updates would not,
but parallel ones are what METHODS specifies (and vectorise).

Exact K [OURS]: bisection on the bias b (larger b selects fewer); every bisection step
restarts mean field from its initialisation, so the result depends on b only. The final mask
is the K largest q at the final b (ties between equal q broken by the lower neuron index): this
equals ``q > 0.5`` when the bisection hits K exactly and breaks ties by q when no b does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit, xlogy


def free_energy(q: np.ndarray, unary: np.ndarray, w: np.ndarray, lam: float) -> float:
    """Mean-field free energy ``F(q) = E_q[E(y)] - H(q)`` (``unary`` includes the bias)."""
    entropy_term = xlogy(q, q) + xlogy(1.0 - q, 1.0 - q)
    return float(unary @ q + 0.5 * lam * q @ (w @ q) + entropy_term.sum())


@dataclass
class MeanFieldResult:
    q: np.ndarray
    sweeps: int
    converged: bool
    free_energy: list[float] = field(default_factory=list)


def mean_field(
    unary: np.ndarray,
    w: np.ndarray,
    lam: float,
    damping: float,
    max_sweeps: int,
    tol: float,
    track: bool = False,
) -> MeanFieldResult:
    """Damped parallel mean field; ``unary`` ``(D,)`` = ``Phi_i(1)`` (bias included)."""
    q = expit(-unary)
    history = [free_energy(q, unary, w, lam)] if track else []
    for sweep in range(1, max_sweeps + 1):
        target = expit(-unary - lam * (w @ q))
        new = (1.0 - damping) * q + damping * target
        delta = float(np.max(np.abs(new - q))) if q.size else 0.0
        q = new
        if track:
            history.append(free_energy(q, unary, w, lam))
        if delta < tol:
            return MeanFieldResult(q, sweep, True, history)
    return MeanFieldResult(q, max_sweeps, False, history)


def descent_guaranteed(w: np.ndarray, lam: float, damping: float) -> bool:
    """Sufficient test of ``lam * lambda_max(W) <= 4 (2 - eta) / eta`` (module docstring).

    Uses ``lambda_max(W) <= max_i sum_j W_ij`` (W is non-negative: Perron-Frobenius), which
    needs no eigen-decomposition.
    """
    top = float(w.sum(axis=1).max()) if w.size else 0.0
    return lam * top <= 4.0 * (2.0 - damping) / damping


def top_k(q: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the k largest q (equal q: lower index first)."""
    order = np.lexsort((np.arange(q.size), -q))
    return np.sort(order[:k])


@dataclass
class SolveResult:
    indices: np.ndarray
    q: np.ndarray
    bias: float
    sweeps: int
    converged: bool
    exact: bool
    bisection_steps: int
    free_energy: list[float]


def solve_k(
    unary: np.ndarray,
    w: np.ndarray,
    lam: float,
    k: int,
    damping: float,
    max_sweeps: int,
    tol: float,
    max_bisection: int = 200,
) -> SolveResult:
    """Bias b such that mean field selects exactly ``k`` neurons; ``unary`` excludes b."""
    d = unary.size

    def run(b: float) -> MeanFieldResult:
        return mean_field(unary + b, w, lam, damping, max_sweeps, tol)

    # at lo every field is >= 1 for any q (all selected); at hi every field is <= -1 (none)
    lo = float(np.min(-unary - lam * w.sum(axis=1))) - 1.0
    hi = float(np.max(-unary)) + 1.0
    final_b, exact, steps = lo, k == d, 0
    while not exact and steps < max_bisection:
        steps += 1
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:  # the bracket cannot shrink further in float64
            break
        count = int((run(mid).q > 0.5).sum())
        if count == k:
            final_b, exact = mid, True
        elif count > k:
            lo = final_b = mid
        else:
            hi = mid
    result = mean_field(unary + final_b, w, lam, damping, max_sweeps, tol, track=True)
    return SolveResult(
        indices=top_k(result.q, k),
        q=result.q,
        bias=final_b,
        sweeps=result.sweeps,
        converged=result.converged,
        exact=exact,
        bisection_steps=steps,
        free_energy=result.free_energy,
    )
