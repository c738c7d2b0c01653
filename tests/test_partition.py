"""make_partition on a synthetic set whose x is the example's index, so parts can be
checked for disjointness and coverage exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsweep.task import SCHEMES, Dataset, Partition, make_partition
from fedsweep.core.errors import ConfigError

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
    return [p.server_f, p.server_g, *p.clients_f, *p.clients_g]


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
    assert len(p.clients_f) == 4 and len(p.clients_g) == 3
    assert all(len(d) > 0 for d in parts(p))
    all_ids = [i for d in parts(p) for i in ids(d)]
    assert len(all_ids) == len(set(all_ids)), "parts overlap"
    for d in parts(p):  # labels travel with their examples
        assert torch.equal(d.y, TRAIN.y[d.x.view(-1).long()])
    f_total = len(p.server_f) + sum(len(d) for d in p.clients_f)
    g_total = len(p.server_g) + sum(len(d) for d in p.clients_g)
    if scheme == "frequent_rare":
        f_ids = set(torch.nonzero(in_f(TRAIN)).view(-1).tolist())
        assert f_ids <= set(all_ids)  # every common-class example is kept
        assert g_total / (f_total + g_total) == pytest.approx(0.1, abs=1 / N)
    else:
        assert sorted(all_ids) == list(range(N))
    if scheme == "iid":
        assert f_total == N // 2
    assert len(p.server_f) == round(0.1 * f_total) and len(p.server_g) == round(0.1 * g_total)
    if client_split == "iid":
        for clients in (p.clients_f, p.clients_g):
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
    for d in (p.server_f, *p.clients_f):
        assert in_f(d, f_classes).all()
    for d in (p.server_g, *p.clients_g):
        assert not in_f(d, f_classes).any()
    assert sum(len(d) for d in parts(p)) == N


def test_frequent_rare_share_and_stratification() -> None:
    p = build(scheme="frequent_rare", rare_fraction=0.2)
    g_labels = torch.cat([p.server_g.y, *(d.y for d in p.clients_g)])
    f_count = len(p.server_f) + sum(len(d) for d in p.clients_f)
    assert len(g_labels) == round(0.2 / 0.8 * f_count)  # g is a 0.2 share of f + g
    assert not in_f(p.server_g).any() and in_f(p.server_f).all()
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
        assert in_f(p.server_f).all() and not in_f(p.server_g).any()
        assert (len(p.server_f), len(p.server_g)) == (len(same.server_f), len(same.server_g))
        assert sorted(i for d in parts(p) for i in ids(d)) == list(range(N))
        assert all(in_f(d).all() for d in p.clients_f) and not any(in_f(d).any() for d in p.clients_g)
    for part in ("server_f", "server_g"):
        top_same, top_half = _top_share(getattr(same, part)), _top_share(getattr(half, part))
        assert top_same <= 0.2 + 2 / len(getattr(same, part))  # five classes of equal size: 1/5 each
        assert top_half == pytest.approx(0.5 * top_same + 0.5, abs=2 / len(getattr(half, part)))
        assert _top_share(getattr(single, part)) == 1.0


def test_a_class_too_small_for_its_share_is_filled_from_the_others() -> None:
    """Asking one class for more examples than it has takes all of it and the rest by the mix."""
    p = build(server_fraction=0.3, server_similarity=0.0)  # f1 wants 300 of class 0, which has 200
    counts = torch.bincount(p.server_f.y, minlength=C)
    assert len(p.server_f) == 300 and counts.max().item() == 200 and counts.sum().item() == 300


def _mean_top_class_share(clients: tuple[Dataset, ...]) -> float:
    return float(np.mean([torch.bincount(d.y).max().item() / len(d) for d in clients]))


def test_dirichlet_skews_labels_and_never_leaves_a_client_empty() -> None:
    iid = build(scheme="iid", clients_f=10, clients_g=10, client_split="iid")
    skew = build(scheme="iid", clients_f=10, clients_g=10, client_split="dirichlet", dirichlet_alpha=0.1)
    assert _mean_top_class_share(skew.clients_f) > _mean_top_class_share(iid.clients_f) + 0.2
    tiny = build(scheme="iid", clients_f=200, clients_g=200, client_split="dirichlet", dirichlet_alpha=0.01)
    assert all(len(d) > 0 for d in parts(tiny))
    assert sum(len(d) for d in parts(tiny)) == N


def test_describe_mentions_every_part() -> None:
    text = build().describe()
    assert "server f1: 100 examples" in text and "server g1: 100 examples" in text
    assert "clients f: 4 clients" in text and "clients g: 3 clients" in text


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
