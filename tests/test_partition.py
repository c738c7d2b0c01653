"""The Partition data model, and VRCS's make_partition on a synthetic set whose x is the
example's index, so parts can be checked for disjointness and coverage exactly."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from fedsweep.core.errors import ConfigError
from fedsweep.task import SCHEMES, Dataset, Partition, make_partition

N, C = 2000, 10
F_CLASSES = (0, 1, 2, 3, 4)  # the default: first half


def _indexed_train(n: int = N, classes: int = C) -> Dataset:
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    return Dataset(x=torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), y=labels)


TRAIN = _indexed_train()


def ids(ds: Dataset) -> list[int]:
    return ds.x.view(-1).long().tolist()


def parts(p: Partition) -> list[Dataset]:
    return [p.server["f"], p.server["g"], *p.clients["f"], *p.clients["g"]]


def build(**overrides) -> Partition:
    kwargs = dict(scheme="classes", num_classes=C, server_fraction=0.1, clients_f=4, clients_g=3, seed=0)
    kwargs.update(overrides)
    return make_partition(TRAIN, **kwargs)


def in_f(ds: Dataset, f_classes=F_CLASSES) -> torch.Tensor:
    return torch.isin(ds.y, torch.tensor(f_classes))


@pytest.mark.parametrize("client_split", ["iid", "dirichlet"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_parts_sizes_disjoint_covering(scheme: str, client_split: str) -> None:
    p = build(scheme=scheme, client_split=client_split)
    assert len(p.clients["f"]) == 4 and len(p.clients["g"]) == 3
    assert all(len(d) > 0 for d in parts(p))
    all_ids = [i for d in parts(p) for i in ids(d)]
    assert len(all_ids) == len(set(all_ids)), "parts overlap"
    for d in parts(p):  # labels travel with their examples
        assert torch.equal(d.y, TRAIN.y[d.x.view(-1).long()])
    f_total = len(p.server["f"]) + sum(len(d) for d in p.clients["f"])
    g_total = len(p.server["g"]) + sum(len(d) for d in p.clients["g"])
    if scheme == "frequent_rare":
        f_ids = set(torch.nonzero(in_f(TRAIN)).view(-1).tolist())
        assert f_ids <= set(all_ids)  # every common-class example is kept
        assert g_total / (f_total + g_total) == pytest.approx(0.1, abs=1 / N)
    else:
        assert sorted(all_ids) == list(range(N))
    if scheme == "iid":
        assert f_total == N // 2
    assert len(p.server["f"]) == round(0.1 * f_total) and len(p.server["g"]) == round(0.1 * g_total)
    if client_split == "iid":
        for clients in (p.clients["f"], p.clients["g"]):
            sizes = [len(d) for d in clients]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("scheme", SCHEMES)
def test_deterministic_for_seed_and_varies_across_seeds(scheme: str) -> None:
    a, b, c = (build(scheme=scheme, client_split="dirichlet", seed=s) for s in (5, 5, 6))
    assert [ids(d) for d in parts(a)] == [ids(d) for d in parts(b)]
    assert [ids(d) for d in parts(a)] != [ids(d) for d in parts(c)]


def test_classes_scheme_keeps_labels_in_their_group() -> None:
    f_classes = (0, 3, 7)
    p = build(scheme="classes", f_classes=f_classes, client_split="dirichlet")
    for d in (p.server["f"], *p.clients["f"]):
        assert in_f(d, f_classes).all()
    for d in (p.server["g"], *p.clients["g"]):
        assert not in_f(d, f_classes).any()
    assert sum(len(d) for d in parts(p)) == N


def test_frequent_rare_share_and_stratification() -> None:
    p = build(scheme="frequent_rare", rare_fraction=0.2)
    g_labels = torch.cat([p.server["g"].y, *(d.y for d in p.clients["g"])])
    f_count = len(p.server["f"]) + sum(len(d) for d in p.clients["f"])
    assert len(g_labels) == round(0.2 / 0.8 * f_count)  # g is a 0.2 share of f + g
    assert not in_f(p.server["g"]).any() and in_f(p.server["f"]).all()
    counts = torch.bincount(g_labels, minlength=C)[5:]
    assert counts.max() - counts.min() <= 1  # each rare class keeps its share


def test_frequent_rare_needs_enough_rare_examples() -> None:
    with pytest.raises(ConfigError, match=r"rare_fraction=0.6"):
        build(scheme="frequent_rare", rare_fraction=0.6)


def _top_share(ds: Dataset) -> float:
    return torch.bincount(ds.y).max().item() / len(ds)


def test_server_similarity_skews_the_server_class_mix_and_keeps_size() -> None:
    """1.0: f1 (g1) has its group's class mix; 0.0: one class only; in between, the top class
    holds s·π_top + (1 − s) of the part. The server's parts stay in their groups."""
    same, half, single = (build(server_similarity=s) for s in (1.0, 0.5, 0.0))
    for p in (same, half, single):
        assert in_f(p.server["f"]).all() and not in_f(p.server["g"]).any()
        assert (len(p.server["f"]), len(p.server["g"])) == (len(same.server["f"]), len(same.server["g"]))
        assert sorted(i for d in parts(p) for i in ids(d)) == list(range(N))
        assert all(in_f(d).all() for d in p.clients["f"]) and not any(in_f(d).any() for d in p.clients["g"])
    for group in ("f", "g"):
        top_same, top_half = _top_share(same.server[group]), _top_share(half.server[group])
        assert top_same <= 0.2 + 2 / len(same.server[group])  # five classes of equal size: 1/5 each
        assert top_half == pytest.approx(0.5 * top_same + 0.5, abs=2 / len(half.server[group]))
        assert _top_share(single.server[group]) == 1.0


def test_a_class_too_small_for_its_share_is_filled_from_the_others() -> None:
    """Asking one class for more examples than it has takes all of it and the rest by the mix."""
    p = build(server_fraction=0.3, server_similarity=0.0)  # f1 wants 300 of class 0, which has 200
    counts = torch.bincount(p.server["f"].y, minlength=C)
    assert len(p.server["f"]) == 300 and counts.max().item() == 200 and counts.sum().item() == 300


def _mean_top_class_share(clients: tuple[Dataset, ...]) -> float:
    return float(np.mean([torch.bincount(d.y).max().item() / len(d) for d in clients]))


def test_dirichlet_skews_labels_and_never_leaves_a_client_empty() -> None:
    iid = build(scheme="iid", clients_f=10, clients_g=10, client_split="iid")
    skew = build(scheme="iid", clients_f=10, clients_g=10, client_split="dirichlet", dirichlet_alpha=0.1)
    assert _mean_top_class_share(skew.clients["f"]) > _mean_top_class_share(iid.clients["f"]) + 0.2
    tiny = build(scheme="iid", clients_f=200, clients_g=200, client_split="dirichlet", dirichlet_alpha=0.01)
    assert all(len(d) > 0 for d in parts(tiny))
    assert sum(len(d) for d in parts(tiny)) == N


def test_describe_mentions_every_part() -> None:
    text = build().describe()
    assert "server f: 100 examples" in text and "server g: 100 examples" in text
    assert "group f: 4 clients" in text and "group g: 3 clients" in text
    assert "weight 0.5" in text


def test_too_few_examples_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"clients_f=5000"):
        build(clients_f=5000)
    with pytest.raises(ConfigError, match=r"server_fraction=0.0001"):
        build(server_fraction=0.0001)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"scheme": "bogus"}, "scheme='bogus'"),
        ({"client_split": "shards"}, "client_split='shards'"),
        ({"server_fraction": 0.0}, "server_fraction=0.0"),
        ({"server_fraction": 1.0}, "server_fraction=1.0"),
        ({"clients_f": 0}, "clients_f=0"),
        ({"clients_g": -1}, "clients_g=-1"),
        ({"f_classes": []}, "f_classes=[]"),
        ({"f_classes": [10]}, "f_classes=[10]"),
        ({"f_classes": [1, 1]}, "f_classes=[1, 1]"),
        ({"f_classes": list(range(C))}, "f_classes=[0, 1,"),
        ({"rare_fraction": 0.0}, "rare_fraction=0.0"),
        ({"rare_fraction": 1.0}, "rare_fraction=1.0"),
        ({"f_fraction": 1.2}, "f_fraction=1.2"),
        ({"server_similarity": 1.5}, "server_similarity=1.5"),
        ({"server_similarity": -0.1}, "server_similarity=-0.1"),
        ({"dirichlet_alpha": 0.0}, "dirichlet_alpha=0.0"),
        ({"num_classes": 5}, "num_classes=5"),
    ],
)
def test_validation_names_the_value(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(**overrides)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- VRCS against the old code

# From the two-group Partition's make_partition (commit bf26d0b, before Partition held named
# groups), on TRAIN with server_fraction 0.1 and 4 + 3 clients: each part's size (server f,
# server g, clients f, clients g), the server f part's and client f0's class counts, and a
# digest of every part's example ids in order.
OLD_VRCS = [
    (dict(scheme="classes", client_split="iid", seed=0),
     [100, 100, 225, 225, 225, 225, 300, 300, 300],
     [20, 20, 20, 20, 20, 0, 0, 0, 0, 0], [33, 54, 45, 49, 44, 0, 0, 0, 0, 0], "183bd3f68312577a"),
    (dict(scheme="frequent_rare", client_split="dirichlet", rare_fraction=0.2, seed=1),
     [100, 25, 119, 338, 259, 184, 42, 94, 89],
     [20, 20, 20, 20, 20, 0, 0, 0, 0, 0], [21, 5, 86, 7, 0, 0, 0, 0, 0, 0], "4b36a7aaca281edf"),
    (dict(scheme="iid", client_split="dirichlet", server_similarity=0.5, seed=2),
     [100, 100, 191, 247, 249, 213, 208, 278, 414],
     [5, 5, 56, 5, 5, 5, 5, 4, 5, 5], [8, 0, 0, 62, 35, 1, 2, 61, 12, 10], "9aea5644e997143b"),
]  # fmt: skip


@pytest.mark.parametrize("overrides, sizes, server_f_counts, client_f0_counts, digest", OLD_VRCS)
def test_vrcs_gives_the_old_shards_for_the_same_seed(overrides, sizes, server_f_counts, client_f0_counts, digest):
    p = build(**overrides)
    assert list(p.clients) == ["f", "g"] and list(p.server) == ["f", "g"]
    assert p.group_weights() == {"f": 0.5, "g": 0.5}
    assert [len(d) for d in parts(p)] == sizes
    assert torch.bincount(p.server["f"].y, minlength=C).tolist() == server_f_counts
    assert torch.bincount(p.clients["f"][0].y, minlength=C).tolist() == client_f0_counts
    assert hashlib.sha256(repr([ids(d) for d in parts(p)]).encode()).hexdigest()[:16] == digest


# ---------------------------------------------------------------- the Partition data model


def _shards(*sizes: int) -> tuple[Dataset, ...]:
    return tuple(TRAIN.subset(slice(0, n)) for n in sizes)


def test_group_weights_by_examples_or_as_given() -> None:
    p = Partition(clients={"a": _shards(10, 20), "b": _shards(70)}, server={"b": TRAIN.subset(slice(0, 5))})
    assert p.group_weights() == {"a": 0.3, "b": 0.7}  # the server's data does not count
    q = Partition(clients={"a": _shards(10, 20), "b": _shards(70)}, weights={"b": 0.25, "a": 0.75})
    assert list(q.group_weights().items()) == [("a", 0.75), ("b", 0.25)]  # in the groups' order
    assert "group a: 2 clients, sizes 10-20, total 30, weight 0.75," in q.describe()


def test_partition_copies_its_mappings_and_tuples_the_shards() -> None:
    groups = {"a": list(_shards(3, 4))}
    p = Partition(clients=groups)
    groups["b"] = list(_shards(1))
    assert list(p.clients) == ["a"] and isinstance(p.clients["a"], tuple) and p.server == {}
    assert p.group_weights() == {"a": 1.0}


def test_describe_a_partition_without_class_labels() -> None:
    """Regression targets (float y) have sizes but no class counts."""
    x = torch.zeros(6, 1, 1, 1)
    p = Partition(clients={"only": (Dataset(x[:2], torch.zeros(2, 1)), Dataset(x[2:], torch.zeros(4, 1)))})
    assert p.describe() == "group only: 2 clients, sizes 2-4, total 6, weight 1"


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(clients={}), "at least one client group"),
        (dict(clients={"a": ()}), "group 'a' needs clients with examples, got sizes []"),
        (dict(clients={"a": _shards(3, 0)}), "group 'a' needs clients with examples, got sizes [3, 0]"),
        (dict(clients={"": _shards(3)}), "non-empty strings, got ''"),
        (dict(clients={1: _shards(3)}), "non-empty strings, got 1"),
        (dict(clients={"a": _shards(3)}, server={"a": TRAIN, "b": TRAIN}), "server data for ['b'] names no client group; groups: ['a']"),
        (dict(clients={"a": _shards(3)}, server={"a": TRAIN.subset([])}), "server data must not be empty"),
        (dict(clients={"a": _shards(3), "b": _shards(3)}, weights={"a": 1.0}), "weights must have one entry per group"),
        (dict(clients={"a": _shards(3)}, weights={"a": 1.0, "b": 0.0}), "weights must have one entry per group"),
        (dict(clients={"a": _shards(3), "b": _shards(3)}, weights={"a": 1.5, "b": -0.5}), "finite, > 0 and sum to 1"),
        (dict(clients={"a": _shards(3), "b": _shards(3)}, weights={"a": 0.5, "b": 0.6}), "finite, > 0 and sum to 1"),
        (dict(clients={"a": _shards(3), "b": _shards(3)}, weights={"a": 0.0, "b": 1.0}), "finite, > 0 and sum to 1"),
        (dict(clients={"a": _shards(3)}, weights={"a": math.inf}), "finite, > 0 and sum to 1"),
        (dict(clients={"a": _shards(3)}, weights={"a": math.nan}), "finite, > 0 and sum to 1"),
        (dict(clients={"a": _shards(3)}, weights={"a": True}), "finite, > 0 and sum to 1"),
    ],
)
def test_partition_validation_is_one_line(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Partition(**kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_weights_may_miss_one_by_rounding_only() -> None:
    thirds = {g: 1 / 3 for g in "abc"}
    p = Partition(clients={g: _shards(2) for g in "abc"}, weights=thirds)
    assert p.group_weights() == thirds
