"""The standard FL partitions (NIID-Bench's IID, Dirichlet label skew, #C labels per client,
quantity skew, and the data's natural clients) on a synthetic set whose x is the example's
index, each checked for what it promises and against a reference of NIID-Bench's rule as
Flower's baseline draws it (``numpy.random.default_rng(seed)``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fedsweep.core.errors import ConfigError
from fedsweep.experiment import components
from fedsweep.task import Dataset, load_digits
from fedsweep.task.partitions import MAX_DRAWS, Partition, dirichlet, iid, labels_per_client, natural, quantity_skew

N, K = 2000, 10
CONFIGS = Path(__file__).resolve().parents[1] / "fedsweep" / "configs" / "partition"


def _indexed(labels: np.ndarray, client_ids=None) -> Dataset:
    n = len(labels)
    return Dataset(x=torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), y=torch.as_tensor(labels), client_ids=client_ids)


TRAIN = _indexed(np.random.default_rng(0).permutation(np.arange(N) % K))
Y = TRAIN.y.numpy()


def ids(ds: Dataset) -> list[int]:
    return ds.x.view(-1).long().tolist()


def shards(p: Partition) -> list[list[int]]:
    return [ids(d) for d in p.clients["clients"]]


def server_ids(p: Partition) -> list[int]:
    return ids(p.server["clients"]) if p.server else []


def class_counts(d: Dataset) -> np.ndarray:
    return torch.bincount(d.y, minlength=K).numpy()


STANDARD = [
    (iid, {}),
    (dirichlet, {"alpha": 0.5}),
    (labels_per_client, {"labels": 2}),
    (quantity_skew, {"beta": 0.5}),
]


def make(rule, *, train: Dataset = TRAIN, seed: int = 0, clients: int = 10, **keys) -> Partition:
    return rule(train, num_classes=K, seed=seed, clients=clients, **keys)


# ---------------------------------------------------------------- every partition


@pytest.mark.parametrize("rule, keys", STANDARD)
def test_the_clients_data_is_one_copy_of_the_rows(rule, keys) -> None:
    """A partition gathers its clients' rows once; the run's clients' data (ClientData) is that
    copy, not another (the training set itself can then be dropped)."""
    from fedsweep.federation.client_data import ClientData

    partition = make(rule, **keys)
    data = ClientData.from_partition(partition)
    first = partition.clients["clients"][0]
    assert np.shares_memory(data.x, first.x.numpy()) and np.shares_memory(data.y, first.y.numpy())
    assert not np.shares_memory(data.x, TRAIN.x.numpy())
    assert [data.shard(i).x.view(-1).long().tolist() for i in range(data.num_clients)] == shards(partition)


@pytest.mark.parametrize("server_fraction", [0.0, 0.1])
@pytest.mark.parametrize("rule, keys", STANDARD)
def test_sizes_disjoint_covering_and_labels_travel(rule, keys, server_fraction) -> None:
    p = make(rule, server_fraction=server_fraction, **keys)
    assert list(p.clients) == ["clients"] and len(p.clients["clients"]) == 10
    assert all(len(s) > 0 for s in shards(p))
    everything = [i for s in shards(p) for i in s] + server_ids(p)
    assert sorted(everything) == list(range(N))  # disjoint and covering (10 clients hold every class)
    assert len(server_ids(p)) == round(server_fraction * N)
    assert p.group_weights() == {"clients": 1.0}
    for d in [*p.clients["clients"], *p.server.values()]:
        assert torch.equal(d.y, TRAIN.y[d.x.view(-1).long()])


@pytest.mark.parametrize("rule, keys", STANDARD)
def test_deterministic_for_a_seed_and_varies_across_seeds(rule, keys) -> None:
    a, b, c = (make(rule, seed=s, server_fraction=0.1, **keys) for s in (3, 3, 4))
    assert shards(a) == shards(b) and server_ids(a) == server_ids(b)
    assert shards(a) != shards(c)


# ---------------------------------------------------------------- IID


def test_iid_is_an_even_random_split_as_in_flower() -> None:
    p = make(iid, seed=7)
    sizes = [len(s) for s in shards(p)]
    assert max(sizes) - min(sizes) <= 1
    order = np.random.default_rng(7).choice(N, N, replace=False)  # Flower's "iid" (similarity 1.0)
    assert shards(p) == [s.tolist() for s in np.array_split(order, 10)]
    uneven = make(iid, clients=7)
    assert sorted({len(s) for s in shards(uneven)}) == [285, 286]


# ---------------------------------------------------------------- Dirichlet label skew


def reference_labeldir(y: np.ndarray, n: int, alpha: float, seed: int, min_required: int = 10):
    """NIID-Bench's noniid-labeldir as Flower's baseline draws it; also returns the draws taken."""
    rng = np.random.default_rng(seed)
    smallest, draws = 0, 0
    while smallest < min_required:
        draws += 1
        held: list[list[int]] = [[] for _ in range(n)]
        for k in range(K):
            members = np.where(y == k)[0]
            rng.shuffle(members)
            p = rng.dirichlet(np.repeat(alpha, n))
            p = np.array([pj * (len(h) < len(y) / n) for pj, h in zip(p, held)])  # the balance cap
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(members)).astype(int)[:-1]
            held = [h + part.tolist() for h, part in zip(held, np.split(members, cuts))]
            smallest = min(len(h) for h in held)
    return held, draws


@pytest.mark.parametrize("alpha, seed, n", [(0.5, 0, 2000), (0.1, 1, 2000), (0.1, 3, 300), (0.3, 5, 300)])
def test_dirichlet_matches_niid_bench_including_the_retry(alpha: float, seed: int, n: int) -> None:
    train = TRAIN.subset(slice(0, n))
    expected, draws = reference_labeldir(Y[:n], 10, alpha, seed)
    assert shards(dirichlet(train, num_classes=K, seed=seed, clients=10, alpha=alpha)) == expected
    if n == 300:
        assert draws > 1, "this case should exercise the min_size retry"


def _mean_top_share(p: Partition) -> float:
    return float(np.mean([class_counts(d).max() / len(d) for d in p.clients["clients"]]))


def test_dirichlet_skew_grows_as_alpha_falls_with_min_size_and_cap_kept() -> None:
    top = {alpha: _mean_top_share(make(dirichlet, alpha=alpha, seed=1)) for alpha in (100.0, 0.5, 0.1)}
    assert top[100.0] < 0.2 < top[0.5] < top[0.1]  # 10 balanced classes: 0.1 each without skew
    for alpha in (0.1, 0.5):
        p = make(dirichlet, alpha=alpha, clients=20, min_size=30)
        sizes = [len(s) for s in shards(p)]
        assert min(sizes) >= 30
        assert max(sizes) < N / 20 + N / K  # a client stops taking examples once it holds N/n


def test_dirichlet_with_a_tiny_alpha_redraws_instead_of_dividing_by_zero() -> None:
    """At α = 1e-3 a class's shares underflow to 0 but for one client; when that client is at
    the cap, NIID-Bench divides 0 by 0. Such a draw is a failed draw: the result is valid."""
    p = make(dirichlet, alpha=1e-3)
    assert sorted(i for s in shards(p) for i in s) == list(range(N))
    assert min(len(s) for s in shards(p)) >= 10 and _mean_top_share(p) > 0.9


def test_dirichlet_that_cannot_reach_min_size_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        make(dirichlet, alpha=0.01, clients=20, train=TRAIN.subset(slice(0, 200)))  # 10 each, exactly
    message = str(info.value)
    assert "partition.alpha=0.01" in message and "partition.min_size=10" in message and "200 examples" in message
    assert f"{MAX_DRAWS} draws" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"partition.clients=21 with partition.min_size=10 each needs 210 examples"):
        make(dirichlet, alpha=0.5, clients=21, train=TRAIN.subset(slice(0, 200)))


# ---------------------------------------------------------------- #C labels per client


def reference_label_quantity(y: np.ndarray, n: int, labels: int, seed: int) -> list[list[int]]:
    """NIID-Bench's noniid-#label<C> as Flower's baseline draws it."""
    rng = np.random.default_rng(seed)
    holders, held = [0] * K, []
    for i in range(n):
        current = [i % K]
        holders[i % K] += 1
        while len(current) < labels:
            c = rng.choice(K, 1)[0]
            if c not in current:
                current.append(c)
                holders[c] += 1
        held.append(current)
    out: list[list[int]] = [[] for _ in range(n)]
    for k in range(K):
        members = np.where(y == k)[0]
        rng.shuffle(members)
        parts = iter(np.array_split(members, holders[k]))
        for i in range(n):
            if k in held[i]:
                out[i] += next(parts).tolist()
    return out


@pytest.mark.parametrize("labels, clients, seed", [(1, 10, 0), (2, 10, 3), (3, 10, 1), (2, 25, 2), (K, 10, 0)])
def test_labels_per_client_matches_niid_bench_and_holds_its_classes(labels: int, clients: int, seed: int) -> None:
    p = make(labels_per_client, labels=labels, clients=clients, seed=seed)
    assert shards(p) == reference_label_quantity(Y, clients, labels, seed)
    holders: dict[int, list[int]] = {}
    for i, d in enumerate(p.clients["clients"]):
        held = np.flatnonzero(class_counts(d))
        assert len(held) == labels and i % K in held  # exactly C classes, class i mod K among them
        for c in held:
            holders.setdefault(int(c), []).append(int(class_counts(d)[c]))
    for c, counts in holders.items():  # each class split equally among its holders
        assert max(counts) - min(counts) <= 1 and sum(counts) == (Y == c).sum()


def test_one_label_per_client_gives_client_i_class_i_and_drops_unheld_classes() -> None:
    p = make(labels_per_client, labels=1, clients=5)
    assert [set(np.flatnonzero(class_counts(d))) for d in p.clients["clients"]] == [{0}, {1}, {2}, {3}, {4}]
    assert sum(len(s) for s in shards(p)) == (Y < 5).sum()  # classes 5-9: no client holds them


def test_labels_per_client_errors() -> None:
    with pytest.raises(ConfigError, match=r"^partition.labels must be in \[1, num_classes=10\], got partition.labels=11$"):
        make(labels_per_client, labels=11)
    no_nines = TRAIN.subset(TRAIN.y != 9)
    with pytest.raises(ConfigError, match=r"partition.labels=1 leaves client 9 \(classes \[9\]\) without examples"):
        make(labels_per_client, labels=1, train=no_nines)
    with pytest.raises(ConfigError, match=r"labels 0..9 do not fit num_classes=5"):
        labels_per_client(TRAIN, num_classes=5, seed=0, clients=10, labels=1)


# ---------------------------------------------------------------- quantity skew


def reference_diff_quantity(n_examples: int, n: int, beta: float, seed: int) -> list[list[int]]:
    """NIID-Bench's iid-diff-quantity, its draws from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_examples)
    smallest = 0.0
    while smallest < 10:
        p = rng.dirichlet(np.repeat(beta, n))
        p = p / p.sum()
        smallest = np.min(p * n_examples)
    return [s.tolist() for s in np.split(order, (np.cumsum(p) * n_examples).astype(int)[:-1])]


@pytest.mark.parametrize("beta, seed", [(0.5, 0), (0.2, 2), (5.0, 1)])
def test_quantity_skew_matches_niid_bench(beta: float, seed: int) -> None:
    assert shards(make(quantity_skew, beta=beta, seed=seed)) == reference_diff_quantity(N, 10, beta, seed)


def test_quantity_skew_varies_sizes_but_not_the_label_mix() -> None:
    p = make(quantity_skew, beta=0.5, seed=4)
    sizes = [len(s) for s in shards(p)]
    assert min(sizes) >= 10 and max(sizes) > 3 * min(sizes)
    for d in p.clients["clients"]:
        if len(d) >= 150:  # class shares near 1/10 (sd ≈ 0.025 at 150 examples)
            assert np.abs(class_counts(d) / len(d) - 0.1).max() < 0.1
    assert _mean_top_share(make(quantity_skew, beta=0.5, seed=1)) < _mean_top_share(make(dirichlet, alpha=0.5, seed=1))


def test_quantity_skew_that_cannot_reach_min_size_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        make(quantity_skew, beta=0.05, clients=50, min_size=30)  # 1,500 of 2,000 at minimum
    assert "partition.beta=0.05" in str(info.value) and "partition.min_size=30" in str(info.value)


# ---------------------------------------------------------------- natural clients


def test_natural_makes_one_client_per_id_in_data_order() -> None:
    writers = np.array(["w3", "w1", "w2", "w1", "w3", "w3", "w2", "w1", "w1", "w3"])
    train = _indexed(np.arange(10) % 3, client_ids=writers)
    p = natural(train, num_classes=3, seed=0)
    assert shards(p) == [[1, 3, 7, 8], [2, 6], [0, 4, 5, 9]]  # w1, w2, w3
    assert p.server == {}
    assert train.client_ids.tolist() == [2, 0, 1, 0, 2, 2, 1, 0, 0, 2]  # strings become their ranks
    assert train.subset([3, 0]).client_ids.tolist() == [0, 2]  # subset keeps each example's id


def test_natural_server_takes_a_share_of_each_client_never_its_last() -> None:
    client_ids = torch.as_tensor(np.repeat([5, 9, 2], [40, 1, 20]))
    train = _indexed(np.zeros(61, dtype=np.int64), client_ids=client_ids)
    p = natural(train, num_classes=1, seed=3, server_fraction=0.25)
    assert [len(s) for s in shards(p)] == [15, 30, 1]  # ids 2, 5, 9: 20 − 5, 40 − 10, 1 − 0
    assert sorted(server_ids(p) + [i for s in shards(p) for i in s]) == list(range(61))
    assert natural(train, num_classes=1, seed=3, server_fraction=0.25).server["clients"].x.equal(p.server["clients"].x)
    assert p.group_weights() == {"clients": 1.0}


def test_natural_needs_client_ids() -> None:
    with pytest.raises(ConfigError) as info:
        natural(TRAIN, num_classes=K, seed=0)
    assert str(info.value).startswith("partition=natural needs a dataset with client ids (DataBundle.client_ids")
    assert load_digits().client_ids is None


@pytest.mark.parametrize("bad", [np.zeros(3), torch.zeros(3), np.zeros(2, dtype=np.int64), torch.zeros(3, dtype=torch.bool)])
def test_client_ids_are_one_integer_or_string_per_example(bad) -> None:
    with pytest.raises(ValueError, match="client_ids must be one integer or string id per example"):
        Dataset(torch.zeros(3, 1), torch.zeros(3, dtype=torch.int64), client_ids=bad)


# ---------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "rule, keys, needle",
    [
        (iid, {"clients": 0}, "partition.clients must be a positive integer, got partition.clients=0"),
        (iid, {"clients": 2.5}, "partition.clients=2.5"),
        (iid, {"clients": 10, "server_fraction": 1.0}, "partition.server_fraction must be in [0, 1)"),
        (iid, {"clients": 10, "server_fraction": -0.1}, "partition.server_fraction=-0.1"),
        (dirichlet, {"clients": 10, "alpha": 0.0}, "partition.alpha must be a finite number > 0, got partition.alpha=0.0"),
        (dirichlet, {"clients": 10, "alpha": -1}, "partition.alpha=-1"),
        (dirichlet, {"clients": 10, "alpha": math.inf}, "partition.alpha=inf"),
        (dirichlet, {"clients": 10, "alpha": math.nan}, "partition.alpha=nan"),
        (dirichlet, {"clients": 10, "alpha": 0.5, "min_size": 0}, "partition.min_size=0"),
        (labels_per_client, {"clients": 10, "labels": 0}, "partition.labels=0"),
        (quantity_skew, {"clients": 10, "beta": 0}, "partition.beta=0"),
        (quantity_skew, {"clients": 0, "beta": 0.5}, "partition.clients=0"),
        (natural, {"server_fraction": 2}, "partition.server_fraction=2"),
    ],
)
def test_check_config_names_the_key_in_one_line(rule, keys: dict, needle: str) -> None:
    """What a sweep runs on every point before any data loads; the partition runs it too."""
    for call in (lambda: rule.check_config(**keys), lambda: rule(TRAIN, num_classes=K, seed=0, **keys)):
        with pytest.raises(ConfigError) as info:
            call()
        assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("rule, keys", STANDARD)
def test_a_partition_the_data_cannot_fill_is_one_line(rule, keys) -> None:
    with pytest.raises(ConfigError) as info:
        make(rule, clients=N + 1, **keys)
    assert f"partition.clients={N + 1}" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^partition.server_fraction=0.0001 gives the server no example of 2000$"):
        make(rule, server_fraction=0.0001, **keys)


# ---------------------------------------------------------------- the shipped configs


@pytest.mark.parametrize("name", ["iid", "dirichlet", "labels", "quantity", "natural"])
def test_shipped_configs_build_on_digits(name: str) -> None:
    node = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    target = components.check("partition", node)
    target.check_config(**components.arguments(node))
    train = load_digits().train
    if name == "natural":
        with pytest.raises(ConfigError, match="partition=natural needs a dataset with client ids"):
            components.build("partition", node, train, num_classes=10, seed=0)
        return
    p = components.build("partition", node, train, num_classes=10, seed=0)
    assert len(p.clients["clients"]) == node["clients"] == 10
