"""VRCS: variance-reduced complexity separation (sliding with a snapshot and random groups).

Setting. The server holds h1 = (f1 + g1)/2 on its own data; clients are split
into a frequent group f and a rare group g with h = (f + g)/2. One round at x_t:

1. Full communication:  e = ∇h(x_t) − ∇h1(x_t) = ½[(∇f − ∇f1) + (∇g − ∇g1)](x_t).
2. Proximal step:       x¹ = argmin_x ⟨e, x⟩ + ‖x − x_t‖²/(2θ) + h1(x).
3. Snapshot x_0 = x_t (its difference e is already known).
4. K ~ Geometric(q) local steps, K ∈ {0, 1, 2, …} with P(K = k) = (1 − q)^k q
   (mean (1 − q)/q; q = 1 gives no local step). Step k draws G = f with
   probability p, else g, with weight w_f = 1/(2p), w_g = 1/(2(1 − p)), and uses

       ĝ_k = e + w_G · ([∇G − ∇G1](x^k) − [∇G − ∇G1](x_0))

   which is unbiased: E ĝ_k = ∇h(x^k) − ∇h1(x^k). The snapshot difference e is exact
   (whole shards) and only the correction uses minibatches, the same at x^k and x_0, so
   the estimate is unbiased given the trajectory too. Then x^{k+1} = argmin_x ⟨ĝ_k, x⟩ + ‖x − x^k‖²/(2θ) + h1(x).
5. x_{t+1} = x^{K+1}.

With ``local_participation`` a local step contacts only a uniform sample S of m of the
group's K clients (the full communication still contacts everyone). Its client
gradients are the Horvitz–Thompson estimates Ĝ_S = Σ_{i∈S} (K/m)(n_i/N) ∇F_i, taken at
x^k and at x_0 on the same S, so E_S[Ĝ_S(x^k) − Ĝ_S(x_0)] = ∇G(x^k) − ∇G(x_0) and ĝ_k
stays unbiased (``fedsweep.algorithms.aggregation.sampled_weights``).

The clients keep x_0 = x_t from the round's full communication, so a local step sends
x^k and each contacted client returns one vector, ∇F_i(x^k) − ∇F_i(x_0) on one minibatch
(with full batches the exact snapshot makes the client's ∇F_i(x^k) enough).

Each local step talks to one group only, so group f is contacted about p(1 − q)/q
times per round and group g about (1 − p)(1 − q)/q times, plus one full communication.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedsweep.algorithms.aggregation import sample_clients
from fedsweep.algorithms.common import difference_norms, draw_seed, full_difference, solver_stats
from fedsweep.algorithms.protocols import GradientOracle, Group, MethodState, Solution
from fedsweep.core.checks import check_keys
from fedsweep.core.weights import Weights


@dataclass(frozen=True)
class VRCSConfig:
    """Hyperparameters of VRCS."""

    theta: float  # θ > 0: proximal step size; ≈ 1/δ for server–client similarity δ
    p: float  # probability of drawing group f in a local step, in (0, 1); ≈ δ_f/(δ_f + δ_g)
    q: float  # parameter of the Geometric number of local steps, in (0, 1]
    local_participation: float | int | None = None  # clients per local step: all, a fraction or a count

    def __post_init__(self) -> None:
        check_keys("method", theta=(self.theta, "> 0"), p=(self.p, "(0, 1)"), q=(self.q, "(0, 1]"),
                   local_participation=(self.local_participation, "share"))  # fmt: skip


def group_weight(group: Group, p: float, weight: float = 0.5) -> float:
    """w_f = λ_f/p, w_g = λ_g/(1 − p) (λ = ½ each in VRCS's federation): the importance weights
    that make ĝ unbiased."""
    return weight / p if group == "f" else weight / (1.0 - p)


def sample_local_steps(rng: np.random.Generator, q: float) -> int:
    """K ~ Geometric(q) on {0, 1, 2, …}: P(K = k) = (1 − q)^k q."""
    return int(rng.geometric(q)) - 1  # numpy's support is {1, 2, …}


def sample_group(rng: np.random.Generator, p: float) -> Group:
    """f with probability p, else g."""
    return "f" if rng.random() < p else "g"


def corrected_difference(
    snapshot_diff: Weights, group: Group, change: Weights, p: float, *, weight: float = 0.5, out: Weights | None = None
) -> Weights:
    """ĝ = e + w_G·(d_G(x) − d_G(x_0)), with ``change`` = d_G(x) − d_G(x_0) and d_G = ∇G − ∇G1,
    into ``out`` when given."""
    return Weights.axpy(group_weight(group, p, weight), change, snapshot_diff, out=out)


@dataclass(frozen=True)
class Epoch:
    """One VRCS epoch from x_t: where it ended, the full communication's e(x_t) = (∇h − ∇h1)(x_t)
    and per-group (∇G − ∇G1)(x_t), its argmin solves, its local steps and the clients they asked."""

    x: Weights
    extragrad: Weights
    diffs: dict[Group, Weights]
    solves: list[Solution]
    local_steps: int
    sampled: int

    def stats(self) -> dict[str, float]:
        return {
            **difference_norms(self.extragrad, self.diffs),
            **solver_stats(self.solves),
            "local_steps": float(self.local_steps),
            "clients/local": float(self.sampled),
        }


def vrcs_epoch(oracle: GradientOracle, x_t: Weights, cfg: VRCSConfig, rng: np.random.Generator) -> Epoch:
    """Steps 1–5 of the module docstring from x_t, every draw from ``rng`` (in this order: the
    proximal step's solver seed, K, then per local step its group, clients, minibatch and solver
    seeds). VRCS's round, and the inner epoch of :class:`fedsweep.algorithms.AccVRCS`."""
    # 1. full communication at x_t: d_G(x_t) = ∇G(x_t) − ∇G1(x_t) for both groups
    extragrad, snapshot_diffs = full_difference(oracle, x_t)

    # 2. proximal step around x_t
    solves = [oracle.argmin(extragrad, x_t, cfg.theta, draw_seed(rng))]
    x = solves[-1].x

    # 3.–4. snapshot x_0 = x_t, then K local steps with one group each
    local_steps = sample_local_steps(rng, cfg.q)
    estimate = Weights.zeros_like(extragrad) if local_steps else None  # reused by every local step
    sampled = 0
    for _ in range(local_steps):
        group = sample_group(rng, cfg.p)
        size = len(oracle.clients(group))
        subset = sample_clients(rng, size, cfg.local_participation)
        seed = draw_seed(rng)
        if oracle.deterministic and subset is None:  # d_G(x_0) is exactly the (exact) snapshot's
            (client_x,) = oracle.group_gradients(group, [x], seed)
            (server_x,) = oracle.server(group, [x], seed)
            change = client_x.sub_(server_x).sub_(snapshot_diffs[group])
        else:  # the same minibatch (and sampled clients) at x and x_0; clients hold x_0
            (change,) = oracle.group_gradients(group, [x], seed, subset=subset, snapshot=x_t)
            server_x, server_0 = oracle.server(group, [x, x_t], seed)
            change.sub_(server_x).add_(server_0)
        sampled += size if subset is None else len(subset)
        weight = oracle.group_weight(group)
        estimate = corrected_difference(extragrad, group, change, cfg.p, weight=weight, out=estimate)
        solves.append(oracle.argmin(estimate, x, cfg.theta, draw_seed(rng)))
        x = solves[-1].x
    return Epoch(x, extragrad, snapshot_diffs, solves, local_steps, sampled)


class VRCS:
    """VRCS over a :class:`GradientOracle`; ``init`` then ``round`` repeatedly (one round: one
    :func:`vrcs_epoch`)."""

    name = "vrcs"
    uses_torch_optim = True  # the server steps with a torch.optim optimizer (fedsweep.experiment.loop)
    needs_groups = ("f", "g")  # what the federation must give (checked before any round)
    needs_server = True

    def __init__(self, *, theta: float, p: float, q: float, local_participation: float | int | None = None) -> None:
        self.config = VRCSConfig(theta=theta, p=p, q=q, local_participation=local_participation)

    @property
    def theta(self) -> float:
        return self.config.theta

    def init(self, x0: Weights, *, seed: int, oracle: GradientOracle) -> MethodState:
        return MethodState(x=x0.clone(), seed=seed)

    def round(self, state: MethodState, oracle: GradientOracle) -> tuple[MethodState, dict[str, float]]:
        epoch = vrcs_epoch(oracle, state.x, self.config, state.rng())
        return replace(state, x=epoch.x, round=state.round + 1), epoch.stats()
