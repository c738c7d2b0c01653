"""C-AccExtragradient: two levels of Accelerated Extragradient, one client group per level.

Paper: D. Bylinkin, S. Skorik, D. Bystrov, L. Berezin, A. Avetisyan, A. Beznosikov,
"Accelerated Methods with Complexity Separation Under Data Similarity for Federated Learning
Problems", arXiv:2601.08614. Template: Accelerated Extragradient (AEG), D. Kovalev,
A. Beznosikov, E. Borodich, A. Gasnikov, G. Scutari, "Optimal Gradient Sliding and its
Application to Distributed Optimization Under Similarity", NeurIPS 2022, arXiv:2205.15136.

**What is and is not from that paper.** Its full text was not available. Reviews of it say only
that, with g convex, "a two-level accelerated extragradient scheme" reaches Õ(√(δ_f/μ)) rounds
with M_f and Õ(√(δ_g/μ)) with M_g. Everything below is **reconstructed** from AEG applied
twice. AEG's parameters (Theorem 1 as recalled) are **unverified**: no stored source held its
text. The paper's own constants and inner stopping rule are unknown.

AEG for r = p + q (p L_p-smooth, q convex, r μ-strongly convex), from x⁰ = x_f⁰:

    x_g = τ x + (1 − τ) x_f
    x_f⁺ ≈ argmin_u A(u) = ⟨∇p(x_g), u⟩ + ‖u − x_g‖²/(2θ) + q(u)
    x⁺  = x + ηα (x_f⁺ − x) − η ∇r(x_f⁺)

with τ = min(1, √μ/(2√L_p)), θ = 1/(2L_p), η = min(1/(2μ), 1/(2√(μ L_p))), α = μ. The
subproblem only needs ‖∇A(x_f⁺)‖² ≤ (L_p²/3)‖x_g − argmin A‖². Since A is (1/θ)-strongly
convex, θ‖∇A(x_f⁺)‖ ≤ ε‖x_f⁺ − x_g‖ with ε ≤ 1/(1 + 2√3) ≈ 0.224 implies that condition.
That relative test is the one used here, at both levels.

Setting: h = λ_f f + λ_g g (λ = ½ from the oracle's ``group_weight``), h1 = λ_f f1 + λ_g g1 on
the server, h μ-strongly convex, δ_G = ‖∇²G − ∇²G1‖, d_G = ∇G − ∇G1. Let O be the outer group
(``outer``, f by default) and I the other one.

* Outer level (one round). AEG on r = h with p = λ_O(O − O1), which is L_O = λ_O δ_O smooth,
  and q = h − p = λ_O O1 + λ_I I, which is convex when I is. Each round contacts M_O twice: for
  ∇p(x_g) = λ_O d_O(x_g), and for ∇p(x_f⁺) inside ∇h(x_f⁺) = ∇p(x_f⁺) + ∇q(x_f⁺). The inner
  loop returns ∇q(x_f⁺), so ∇h(x_f⁺) needs no contact with M_I.
* Inner level. The outer subproblem A is solved by AEG with p_in = λ_I(I − I1), which is
  L_I = λ_I δ_I smooth, with q_in = ⟨∇p(x_g), ·⟩ + ‖· − x_g‖²/(2θ) + h1, and with μ_in = 1/θ
  (A's strong convexity when q is convex). It starts at u = u_f = x_g. An inner iteration
  contacts M_I twice: for ∇p_in(u_g), and for ∇q(u_f⁺) = λ_O ∇O1(u_f⁺) + λ_I ∇I(u_f⁺), which
  gives ∇A(u_f⁺) = ∇p(x_g) + (u_f⁺ − x_g)/θ + ∇q(u_f⁺). The inner loop stops when
  θ‖∇A(u_f⁺)‖ ≤ ``outer_tolerance`` · ‖u_f⁺ − x_g‖ (relative, so it tightens as the method
  converges). Past ``max_inner`` iterations it raises ``SolverError`` (max_steps).
* The inner subproblem is the server's argmin. Its two quadratics merge into one:
  1/θ_c = 1/θ + 1/θ_in, c = θ_c (x_g/θ + u_g/θ_in), linear term ∇p(x_g) + ∇p_in(u_g). The inner
  AEG needs θ_in‖∇A_in(u_f⁺)‖ ≤ ``inner_tolerance`` · ‖u_f⁺ − u_g‖. The server measures its
  residual against c instead, so each call asks for the **tightening** tolerance
  ε_in (θ_c/θ_in) ‖u⁺ − u_g‖/‖u⁺ − c‖, whose ratio falls as u_g settles. The ratio is first
  guessed as half the one measured at the previous inner step (1 at the first step), and the
  answer is then checked. If the check fails, the call is solved again with half the ratio
  measured at that answer.

Why the outer level takes f by default (a reconstruction choice). Rounds are ~ 2/τ ~ √(L_O/μ)
at 2 contacts with M_O each. Inner iterations per round are ~ √(L_I/μ_in) = √(δ_I/(2δ_O)) for
relative accuracy, at 2 contacts with M_I each. With O = f: M_f ~ √(δ_f/μ) and
M_g ~ √(δ_f/μ) · √(δ_g/δ_f) = √(δ_g/μ), up to the inner loop's logarithm. Those are the
reviewed rates, and "g convex" is exactly what makes q = λ_f f1 + λ_g g convex. With O = g
(``outer: g``), M_f ~ √(δ_g/μ) · log, which is still accelerated but not separated as reviewed.

The state's ``x`` is AEG's x_f (the iterate evaluated and returned). ``z`` is AEG's x.
Gradients are exact (whole shards): the method is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from fedsweep.algorithms.common import draw_seed, solver_stats
from fedsweep.algorithms.protocols import GradientOracle, Group, MethodState, Solution
from fedsweep.core.checks import check, check_keys, shown
from fedsweep.core.errors import ConfigError, SolverError
from fedsweep.core.weights import Weights

RESOLVES = 4  # argmin calls per inner step at most (the first, then tightened ones)


@dataclass(frozen=True)
class AEGParams:
    """One level's Accelerated Extragradient parameters."""

    tau: float  # τ ∈ (0, 1]: x_g = τ x + (1 − τ) x_f
    eta: float  # η > 0: step of x
    theta: float  # θ > 0: the subproblem's proximal step
    alpha: float  # α > 0: pull of x towards x_f

    @classmethod
    def theory(cls, mu: float, smoothness: float) -> AEGParams:
        """Kovalev et al. (2022), Theorem 1 as recalled (unverified): τ = min(1, √μ/(2√L_p)),
        θ = 1/(2L_p), η = min(1/(2μ), 1/(2√(μL_p))), α = μ."""
        return cls(
            tau=min(1.0, math.sqrt(mu / smoothness) / 2),
            eta=min(1 / (2 * mu), 1 / (2 * math.sqrt(mu * smoothness))),
            theta=1 / (2 * smoothness),
            alpha=mu,
        )


@dataclass(frozen=True)
class CAccEGState(MethodState):
    """``x`` = AEG's x_f (the output), ``z`` = AEG's x."""

    z: Weights | None = None


@dataclass(frozen=True)
class InnerResult:
    """The inner loop's answer: x_f⁺, ∇q(x_f⁺), its iterations, ρ = θ‖∇A(x_f⁺)‖/‖x_f⁺ − x_g‖, the solves."""

    x: Weights
    grad_q: Weights
    steps: int
    residual: float
    solves: list[Solution]


def difference(oracle: GradientOracle, group: Group, x: Weights) -> Weights:
    """d_G(x) = ∇G(x) − ∇G1(x), exact: one contact with the group."""
    (client,) = oracle.group_gradients(group, [x], None)
    (server,) = oracle.server(group, [x], None)
    return client.sub_(server)


@dataclass(frozen=True)
class CAccEGConfig:
    """C-AccExtragradient's hyperparameters: the constants the theory needs, the levels' overrides
    (None: the theory's value) and the inner loops' tolerances."""

    mu: float  # μ > 0: strong convexity of h
    delta_f: float  # δ_f = ‖∇²f − ∇²f1‖ > 0
    delta_g: float  # δ_g = ‖∇²g − ∇²g1‖ > 0
    outer: Literal["f", "g"] = "f"  # the outer level's group
    tau: float | None = None
    eta: float | None = None
    theta: float | None = None
    alpha: float | None = None
    inner_tau: float | None = None
    inner_eta: float | None = None
    inner_theta: float | None = None
    inner_alpha: float | None = None
    outer_tolerance: float = 0.2  # ε_out: the inner loop stops at θ‖∇A(u_f)‖ ≤ ε_out‖u_f − x_g‖
    inner_tolerance: float = 0.2  # ε_in: an argmin is accepted at θ_in‖∇A_in(u)‖ ≤ ε_in‖u − u_g‖
    max_inner: int = 100  # inner iterations per round at most

    def __post_init__(self) -> None:
        check_keys("method", mu=(self.mu, "> 0"), delta_f=(self.delta_f, "> 0"), delta_g=(self.delta_g, "> 0"),
                   outer_tolerance=(self.outer_tolerance, "(0, 1)"), inner_tolerance=(self.inner_tolerance, "(0, 1)"),
                   max_inner=(self.max_inner, "int >= 1"))  # fmt: skip
        if self.outer not in ("f", "g"):
            raise ConfigError(f"method.outer must be f or g, got method.outer={shown(self.outer)}")
        for key in ("tau", "eta", "theta", "alpha", "inner_tau", "inner_eta", "inner_theta", "inner_alpha"):
            if getattr(self, key) is not None:
                check(f"method.{key}", getattr(self, key), "(0, 1]" if key.endswith("tau") else "> 0")

    @property
    def inner(self) -> Group:
        return "g" if self.outer == "f" else "f"

    def levels(self, outer_weight: float, inner_weight: float) -> tuple[AEGParams, AEGParams]:
        """The outer and inner AEG parameters for group weights λ_O, λ_I: the theory's (outer: μ and
        L = λ_O δ_O; inner: μ_in = 1/θ and L_in = λ_I δ_I), with each non-None override in place."""
        deltas = {"f": self.delta_f, "g": self.delta_g}
        names = ("tau", "eta", "theta", "alpha")
        outer = AEGParams.theory(self.mu, outer_weight * deltas[self.outer])
        outer = replace(outer, **{k: getattr(self, k) for k in names if getattr(self, k) is not None})
        inner = AEGParams.theory(1.0 / outer.theta, inner_weight * deltas[self.inner])
        inner = replace(inner, **{k: getattr(self, f"inner_{k}") for k in names if getattr(self, f"inner_{k}") is not None})
        return outer, inner


class CAccExtragradient:
    """C-AccExtragradient over a :class:`GradientOracle`. ``init``, then ``round`` repeatedly (one
    outer AEG iteration per round)."""

    name = "c_acc_extragradient"
    uses_torch_optim = True  # the server steps with a torch.optim optimizer (fedsweep.experiment.loop)
    needs_groups = ("f", "g")
    needs_server = True

    def __init__(
        self,
        *,
        mu: float,
        delta_f: float,
        delta_g: float,
        outer: Literal["f", "g"] = "f",
        tau: float | None = None,
        eta: float | None = None,
        theta: float | None = None,
        alpha: float | None = None,
        inner_tau: float | None = None,
        inner_eta: float | None = None,
        inner_theta: float | None = None,
        inner_alpha: float | None = None,
        outer_tolerance: float = 0.2,
        inner_tolerance: float = 0.2,
        max_inner: int = 100,
    ) -> None:
        self.config = CAccEGConfig(
            mu=mu, delta_f=delta_f, delta_g=delta_g, outer=outer, tau=tau, eta=eta, theta=theta, alpha=alpha,
            inner_tau=inner_tau, inner_eta=inner_eta, inner_theta=inner_theta, inner_alpha=inner_alpha,
            outer_tolerance=outer_tolerance, inner_tolerance=inner_tolerance, max_inner=max_inner,
        )  # fmt: skip

    @property
    def theta(self) -> float:
        """The outer θ (λ = ½ assumed, as in the frequent/rare federation)."""
        return self.config.levels(0.5, 0.5)[0].theta

    def init(self, x0: Weights, *, seed: int, oracle: GradientOracle) -> CAccEGState:
        return CAccEGState(x=x0.clone(), z=x0.clone(), seed=seed)

    def round(self, state: CAccEGState, oracle: GradientOracle) -> tuple[CAccEGState, dict[str, float]]:
        cfg = self.config
        weight = oracle.group_weight(cfg.outer)
        out, inn = cfg.levels(weight, oracle.group_weight(cfg.inner))
        x, x_f = state.z, state.x

        # x_g = τ x + (1 − τ) x_f, and ∇p(x_g) = λ_O d_O(x_g): one contact with M_O
        x_g = x_f.clone().lerp_(x, out.tau)
        grad_p = difference(oracle, cfg.outer, x_g).mul_(weight)
        # x_f⁺ ≈ argmin A by the inner AEG (contacts M_I)
        inner = self._inner(oracle, grad_p, x_g, out, inn, state)
        # ∇h(x_f⁺) = λ_O d_O(x_f⁺) + ∇q(x_f⁺): one contact with M_O
        grad_h = difference(oracle, cfg.outer, inner.x).mul_(weight).add_(inner.grad_q)
        # x⁺ = x + ηα(x_f⁺ − x) − η ∇h(x_f⁺)
        z = x.clone().lerp_(inner.x, out.eta * out.alpha).axpy_(-out.eta, grad_h)

        stats = {
            **solver_stats(inner.solves),
            "inner/steps": float(inner.steps),
            "inner/residual": inner.residual,
            "norm/grad": grad_h.norm().item(),
            "norm/grad_p": grad_p.norm().item(),
        }
        return replace(state, x=inner.x, z=z, round=state.round + 1), stats

    def _inner(
        self, oracle: GradientOracle, grad_p: Weights, x_g: Weights, out: AEGParams, inn: AEGParams, state: CAccEGState
    ) -> InnerResult:
        """AEG on A(u) = ⟨∇p(x_g), u⟩ + ‖u − x_g‖²/(2θ) + q(u) from u = u_f = x_g, until
        θ‖∇A(u_f)‖ ≤ ε_out‖u_f − x_g‖."""
        cfg, rng = self.config, state.rng()
        group, weight = cfg.inner, oracle.group_weight(cfg.inner)
        theta_c = 1.0 / (1.0 / out.theta + 1.0 / inn.theta)
        u, u_f, solves, rho, ratio = x_g.clone(), x_g.clone(), [], math.inf, 1.0
        for step in range(1, cfg.max_inner + 1):
            u_g = u_f.clone().lerp_(u, inn.tau)
            # ∇p(x_g) + ∇p_in(u_g): one contact with M_I; the merged centre c
            linear = difference(oracle, group, u_g).mul_(weight).add_(grad_p)
            center = x_g.clone().mul_(theta_c / out.theta).axpy_(theta_c / inn.theta, u_g)
            u_f, ratio = self._solve(oracle, linear, center, theta_c, u_g, inn.theta, ratio, draw_seed(rng), solves)
            # ∇q(u_f) = λ_O ∇O1(u_f) + λ_I ∇I(u_f): one contact with M_I
            (grad_q,) = oracle.group_gradients(group, [u_f], None)
            (server,) = oracle.server(cfg.outer, [u_f], None)
            grad_q.mul_(weight).axpy_(oracle.group_weight(cfg.outer), server)
            grad_a = (grad_q + grad_p).axpy_(1.0 / out.theta, u_f - x_g)
            # u⁺ = u + η_in α_in (u_f − u) − η_in ∇A(u_f)
            u.lerp_(u_f, inn.eta * inn.alpha).axpy_(-inn.eta, grad_a)
            moved = (u_f - x_g).norm().item()
            rho = out.theta * grad_a.norm().item() / moved if moved > 0 else (0.0 if grad_a.norm() == 0 else math.inf)
            if rho <= cfg.outer_tolerance:
                return InnerResult(u_f, grad_q, step, rho, solves)
        raise SolverError(
            "max_steps", residual=rho, steps=cfg.max_inner, tolerance=cfg.outer_tolerance, theta=out.theta,
            what="the inner loop", advice="raise method.max_inner or method.outer_tolerance (theory: <= 0.224), "
            "or raise method.delta_f and method.delta_g (smaller steps)",
        )  # fmt: skip

    def _solve(
        self, oracle: GradientOracle, linear: Weights, center: Weights, theta_c: float, anchor: Weights,
        theta_in: float, ratio: float, seed: int, solves: list[Solution],
    ) -> tuple[Weights, float]:  # fmt: skip
        """The server's argmin, accepted when θ_in‖∇A(u⁺)‖ ≤ ε_in‖u⁺ − u_g‖ (``anchor`` = u_g). The
        server measures ρ = θ_c‖∇A‖/‖u⁺ − c‖ ≤ tolerance, so the tolerance asked for is
        ε_in (θ_c/θ_in)·r with r ≈ ‖u⁺ − u_g‖/‖u⁺ − c‖: first the given ``ratio``, then half the
        ratio measured at the last answer. Returns u⁺ and half its measured ratio (the next step's
        first guess: the ratio shrinks as the inner iterates settle)."""
        eps = self.config.inner_tolerance
        for _ in range(RESOLVES):
            tolerance = eps * (theta_c / theta_in) * ratio
            solves.append(oracle.argmin(linear, center, theta_c, seed, tolerance=tolerance))
            solution = solves[-1]
            if solution.residual == 0.0:  # exact
                return solution.x, ratio
            to_center = (solution.x - center).norm().item()
            to_anchor = (solution.x - anchor).norm().item()
            ratio = 0.5 * min(1.0, to_anchor / to_center) if to_center > 0 else ratio
            if solution.residual * to_center * theta_in / theta_c <= eps * to_anchor:
                return solution.x, ratio
        raise SolverError("precision", residual=solution.residual, steps=sum(s.steps for s in solves),
                          tolerance=tolerance, theta=theta_c)  # fmt: skip
