"""AccVRCS: VRCS epochs inside a KatyushaX-style accelerated outer loop.

Paper: D. Bylinkin, S. Skorik, D. Bystrov, L. Berezin, A. Avetisyan, A. Beznosikov,
"Accelerated Methods with Complexity Separation Under Data Similarity for Federated Learning
Problems", arXiv:2601.08614 (https://arxiv.org/abs/2601.08614).

**What is and is not from that paper.** Its full text was not available. From reviews of it we
know only the claimed rounds to ε: O(√(δ_f/μ) log 1/ε) with M_f and
O((δ_g/δ_f)^{3/2} √(δ_g/μ) log 1/ε) with M_g. The update rules below are **reconstructed**
from the same first author's OLGA (D. Bylinkin, A. Beznosikov, "Accelerated Methods with
Compressed Communications for Distributed Optimization Problems under Data Similarity",
Algorithms 1–2, Theorem 1 and Corollary 1 with no compression), itself AccSVRS's
(Lin, Han, Ye, Zhang, arXiv:2304.07504) use of KatyushaX. The reconstruction makes these
substitutions:
OLGA's inner epoch becomes VRCS's epoch (:func:`fedsweep.algorithms.vrcs.vrcs_epoch`), f
becomes h, f₁ becomes h1, and OLGA's epoch-end probability p becomes VRCS's q. The parameter
orders below reproduce the reviewers' rates (see "Theory"). The exact constants of the paper
are unknown.

Setting: h = (f + g)/2 over client groups f (M_f) and g (M_g), h1 = (f1 + g1)/2 on the
server, h μ-strongly convex, δ_G = ‖∇²G − ∇²G1‖, e(x) = ∇h(x) − ∇h1(x). Start with
z_0 = y_0 = x_0. One round k:

1. x_{k+1} = τ z_k + (1 − τ) y_k.
2. y_{k+1} = one VRCS epoch from x_{k+1}: a full communication gives e(x_{k+1}), then
   N ~ Geometric(q) ∈ {1, 2, …} argmin steps with VRCS's variance-reduced estimate
   (group f with probability p).
3. A full communication at y_{k+1} gives e(y_{k+1}).
4. The gradient mapping (OLGA's t_k = ∇(h1 − h)(x_{k+1}) − ∇(h1 − h)(y_{k+1})):

       G_{k+1} = q · ( e(y_{k+1}) − e(x_{k+1}) + (x_{k+1} − y_{k+1})/θ ).

   With N = 1 and an exact argmin, G/q = ∇h(y_{k+1}) exactly.
5. z_{k+1} = argmin_z ‖z − z_k‖²/(2α) + ⟨G_{k+1}, z⟩ + (μ/2)‖z − y_{k+1}‖²
           = (z_k + αμ y_{k+1} − α G_{k+1}) / (1 + αμ).

The state's ``x`` is y_k (the iterate evaluated and returned), and ``z`` is z_k. A round contacts
each group twice in full communications, plus the f (or g) local steps of its epoch.

Theory (reconstruction). OLGA's Theorem 1 needs θ ≤ 1/(2δ) and 4αqτ ≤ θ. With VRCS's estimate
it also needs θ ≲ √q/δ̄, where δ̄² = δ_f²/(4p) + δ_g²/(4(1 − p)) is the variance bound. The
Corollary-1 defaults, used when ``tau``/``alpha`` are null, are

    τ = min(√(μθ/q)/4, 1/4),   α = θ/(8qτ).

Rounds ~ 1/τ ~ √(q/(μθ)). With p ≈ q ≈ (δ_f/δ_g)² and θ ≈ √q/(2δ̄) ~ δ_f/δ_g² (the orders at
which VRCS reaches its own reviewed rates Õ(δ_f/μ), Õ(δ_g²/(δ_f μ))), that gives √(δ_f/μ)
rounds at O(1) M_f contacts each. The M_g count is √(δ_f/μ)/q = (δ_g/δ_f)^{3/2} √(δ_g/μ), which
is the reviewed rate. θ, p and q keep VRCS's keys and defaults. μ must be given: it is not
measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from fedsweep.algorithms.common import full_difference
from fedsweep.algorithms.protocols import GradientOracle, MethodState
from fedsweep.algorithms.vrcs import VRCSConfig, vrcs_epoch
from fedsweep.core.checks import check_keys
from fedsweep.core.errors import ConfigError
from fedsweep.core.weights import Weights


@dataclass(frozen=True)
class AccVRCSState(MethodState):
    """``x`` = y_k (the output sequence), ``z`` = z_k (the mirror sequence)."""

    z: Weights | None = None


def default_tau(mu: float, theta: float, q: float) -> float:
    """OLGA's Corollary 1 with VRCS's q for its p: τ = min(√(μθ/q)/4, 1/4)."""
    return min(math.sqrt(mu * theta / q) / 4, 0.25)


def default_alpha(theta: float, q: float, tau: float) -> float:
    """OLGA's Corollary 1: α = θ/(8qτ), so that 4αqτ = θ/2 ≤ θ."""
    return theta / (8 * q * tau)


@dataclass(frozen=True)
class AccVRCSConfig:
    """AccVRCS's outer hyperparameters. VRCS's own (θ, p, q, local participation) sit in ``epoch``."""

    epoch: VRCSConfig
    mu: float  # μ > 0: strong convexity of h (assumed, not measured)
    tau: float  # τ ∈ (0, 1]: weight of z in x_{k+1}
    alpha: float  # α > 0: step of the z-update

    def __post_init__(self) -> None:
        check_keys("method", mu=(self.mu, "> 0"), tau=(self.tau, "(0, 1]"), alpha=(self.alpha, "> 0"))
        theta, q = self.epoch.theta, self.epoch.q
        if 4 * self.alpha * q * self.tau > theta * (1 + 1e-12):
            raise ConfigError(
                f"method.alpha={self.alpha:g} is too large for method.tau={self.tau:g}: OLGA's theorem needs "
                f"4*alpha*q*tau <= theta, here {4 * self.alpha * q * self.tau:.4g} > {theta:g} "
                f"(null gives alpha = theta/(8*q*tau) = {default_alpha(theta, q, self.tau):.4g})"
            )


class AccVRCS:
    """AccVRCS over a :class:`GradientOracle`. ``init``, then ``round`` repeatedly (one outer
    iteration per round)."""

    name = "accvrcs"
    uses_torch_optim = True  # the server steps with a torch.optim optimizer (fedsweep.experiment.loop)
    needs_groups = ("f", "g")
    needs_server = True

    def __init__(
        self,
        *,
        theta: float,
        p: float,
        q: float,
        mu: float,
        tau: float | None = None,
        alpha: float | None = None,
        local_participation: float | int | None = None,
    ) -> None:
        epoch = VRCSConfig(theta=theta, p=p, q=q, local_participation=local_participation)
        check_keys("method", mu=(mu, "> 0"))
        tau = default_tau(mu, theta, q) if tau is None else tau
        check_keys("method", tau=(tau, "(0, 1]"))
        alpha = default_alpha(theta, q, tau) if alpha is None else alpha
        self.config = AccVRCSConfig(epoch=epoch, mu=mu, tau=tau, alpha=alpha)

    @property
    def theta(self) -> float:
        return self.config.epoch.theta

    def init(self, x0: Weights, *, seed: int, oracle: GradientOracle) -> AccVRCSState:
        return AccVRCSState(x=x0.clone(), z=x0.clone(), seed=seed)

    def round(self, state: AccVRCSState, oracle: GradientOracle) -> tuple[AccVRCSState, dict[str, float]]:
        cfg = self.config
        theta, q = cfg.epoch.theta, cfg.epoch.q

        # 1. x_{k+1} = τ z_k + (1 − τ) y_k
        start = state.x.clone().lerp_(state.z, cfg.tau)
        # 2. y_{k+1}: one VRCS epoch from x_{k+1} (its full communication gives e(x_{k+1}))
        epoch = vrcs_epoch(oracle, start, cfg.epoch, state.rng())
        y = epoch.x
        # 3. full communication at y_{k+1}
        e_y, _ = full_difference(oracle, y)
        # 4. G = q·(e(y) − e(x) + (x − y)/θ)
        mapping = e_y.sub_(epoch.extragrad).axpy_(1.0 / theta, start - y).mul_(q)
        # 5. z_{k+1} = (z_k + αμ y − α G)/(1 + αμ)
        a_mu = cfg.alpha * cfg.mu
        z = state.z.clone().axpy_(a_mu, y).axpy_(-cfg.alpha, mapping).div_(1.0 + a_mu)

        stats = {**epoch.stats(), "norm/mapping": mapping.norm().item(), "norm/z-y": (z - y).norm().item()}
        return replace(state, x=y, z=z, round=state.round + 1), stats
