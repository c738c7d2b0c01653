"""Similarity estimate: power iteration, Hessian-vector products, δ on a real run."""

from __future__ import annotations

import pytest
import torch

from fedsweep.experiment.config import compose
from fedsweep.task import Dataset
from fedsweep.experiment.loop import run_experiment
from fedsweep.algorithms.similarity import power_iteration, random_like
from fedsweep.task.models import build_model
from fedsweep.task.compute import mean_hvp
from fedsweep.core.weights import Weights


def test_power_iteration_finds_the_largest_magnitude_eigenvalue():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    eig = torch.tensor([0.5, -3.0, 1.0, 2.0, 0.1, -0.2], dtype=torch.float64)
    matrix = q @ torch.diag(eig) @ q.T
    v0 = random_like(Weights({"v": torch.zeros(6, dtype=torch.float64)}), seed=1)
    estimate = power_iteration(lambda v: Weights({"v": matrix @ v["v"]}), v0, iterations=200)
    assert abs(estimate - 3.0) < 1e-6


def test_an_indefinite_spectrum_plus_minus_lambda_gives_lambda_from_any_start():
    """Eigenvalues ±3 (and smaller ones): the Rayleigh quotient of a mixed iterate ranges over
    [−3, 3]; the estimate is the spectral norm, 3, whatever the start."""
    gen = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    matrix = q @ torch.diag(torch.tensor([3.0, -3.0, 1.0, -0.5, 0.2, 0.0], dtype=torch.float64)) @ q.T
    for seed in range(8):
        v0 = random_like(Weights({"v": torch.zeros(6, dtype=torch.float64)}), seed=seed)
        estimate = power_iteration(lambda v: Weights({"v": matrix @ v["v"]}), v0, iterations=60)
        assert abs(estimate - 3.0) < 1e-6, seed


def test_hvp_matches_the_autograd_hessian():
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 2, 2), num_classes=3, hidden=3, seed=0)
    data = Dataset(torch.randn(20, 1, 2, 2), torch.randint(0, 3, (20,)))
    point = Weights.from_model(model).clone()
    vector = random_like(point, seed=2)
    hv = mean_hvp(model, data, point, vector, batch_size=None, seed=None)

    names = point.names
    shapes = [t.shape for t in point.tensors]
    sizes = [t.numel() for t in point.tensors]

    def loss_of(flat):
        params = dict(zip(names, (p.view(s) for p, s in zip(flat.split(sizes), shapes))))
        out = torch.func.functional_call(model, params, (data.x,))
        return torch.nn.functional.cross_entropy(out, data.y)

    flat = torch.cat([t.flatten() for t in point.tensors])
    hessian = torch.autograd.functional.hessian(loss_of, flat)
    expected = hessian @ torch.cat([t.flatten() for t in vector.tensors])
    torch.testing.assert_close(torch.cat([t.flatten() for t in hv.tensors]), expected, rtol=1e-4, atol=1e-5)


def delta(tmp_path, server_similarity):
    history = []
    run_experiment(
        compose(
            [
                "rounds=1",
                "similarity.estimate=true",
                "similarity.iterations=10",
                f"partition.server_similarity={server_similarity}",
            ]
        ),
        log_dir=tmp_path / str(server_similarity),
        report=history.append,
        progress=False,
    )
    return history[0]["similarity/delta_f"], history[0]["similarity/delta_g"]


def test_delta_rises_as_the_server_similarity_falls(tmp_path):
    """A server whose class mix moves away from its groups' (similarity 1 → 0.5 → 0) has a larger
    δ_f and δ_g each time."""
    deltas = [delta(tmp_path, s) for s in (1.0, 0.5, 0.0)]
    assert all(d > 0 for d in deltas[0])
    for group in (0, 1):
        assert deltas[0][group] < deltas[1][group] < deltas[2][group]
    assert deltas[2][0] > 4 * deltas[0][0] and deltas[2][1] > 4 * deltas[0][1]


def test_the_default_estimate_is_the_exact_hessian_difference():
    """On least squares every Hessian is constant: power iteration on whole shards and all the
    server's data gives δ_G = ‖∇²G − ∇²G1‖₂ to 1e-4; minibatch Hessians give something else."""
    from fedsweep.algorithms.similarity import estimate_similarity
    from tests.least_squares import LeastSquaresFederation

    fed = LeastSquaresFederation()
    exact = estimate_similarity(fed.oracle, fed.x0(), iterations=200, seed=0)
    for group in "fg":
        assert exact[f"similarity/delta_{group}"] == pytest.approx(fed.group_deltas[group], rel=1e-4)
    minibatch = estimate_similarity(fed.oracle, fed.x0(), iterations=200, seed=0, batch_size=5)
    assert minibatch["similarity/delta_f"] != pytest.approx(fed.group_deltas["f"], rel=1e-2)
