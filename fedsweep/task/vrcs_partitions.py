"""VRCS's two-group federation: the f and g client groups and the server's f1/g1 data.

VRCS has two client groups, f ("frequent") and g ("rare"), and a server holding a
small local dataset split into an f-like part (loss f1) and a g-like part (loss g1).
`make_partition` builds all of them from one training set in three steps, and returns
``Partition(clients={"f": …, "g": …}, server={"f": f1, "g": g1}, weights={"f": 0.5, "g": 0.5})``:

1. **Groups.** Every training example goes to group f or group g (``scheme``):

   - ``"iid"``: a seeded shuffle; the first ``round(f_fraction * N)`` examples are
     group f, the rest group g (both groups distributed like the whole set).
   - ``"classes"``: labels in ``f_classes`` are group f, all other labels group g.
   - ``"frequent_rare"``: as ``"classes"`` (f = common classes, g = rare classes),
     but the rare classes are subsampled so that group g holds a ``rare_fraction``
     share of all kept examples: ``|g| = round(rare_fraction / (1 - rare_fraction) * |f|)``,
     so ``|g| / (|f| + |g|) ≈ rare_fraction``. The subsample is stratified (each rare
     class keeps its share of the rare examples); the other rare-class examples are
     dropped. ConfigError if the rare classes have fewer examples than that.

   ``f_classes`` defaults to the first half of the classes, ``range(num_classes // 2)``.

2. **Server.** The server's f1 has ``n_f1 = round(server_fraction * |f|)`` examples of
   group f and its g1 ``n_g1 = round(server_fraction * |g|)`` of group g. Their class mix
   is set by ``server_similarity`` s: f1 draws class c with share
   ``s * π_c + (1 - s) * [c = c*]``, π the group's class mix and c* its most frequent
   class (likewise g1 from g). So 1.0 means the server data is distributed exactly like
   the groups, 0.0 means each part holds one class only, and h1 moves away from h as s
   falls. Shares are apportioned by largest remainder; a class with too few examples
   gives its excess to the others in proportion to π.

3. **Clients.** What remains of each group is split among its clients
   (``client_split``): ``"iid"`` is an even random split (sizes differ by at most one);
   ``"dirichlet"`` gives label skew: for each class, proportions over the group's
   clients are drawn from Dirichlet(``dirichlet_alpha``) (smaller alpha = more skew),
   then any empty client takes one example from the largest client.

All parts are disjoint and non-empty; together they cover the training set (less what
``frequent_rare`` drops). Everything is drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedsweep.core.checks import check_keys, shown
from fedsweep.core.errors import ConfigError
from fedsweep.task.datasets import Dataset
from fedsweep.task.partitions import Partition

SCHEMES: tuple[str, ...] = ("iid", "classes", "frequent_rare")
CLIENT_SPLITS: tuple[str, ...] = ("iid", "dirichlet")


def make_partition(
    train: Dataset,
    *,
    scheme: str,
    num_classes: int,
    server_fraction: float,
    clients_f: int,
    clients_g: int,
    f_classes: Sequence[int] | None = None,
    rare_fraction: float = 0.1,
    f_fraction: float = 0.5,
    server_similarity: float = 1.0,
    client_split: str = "iid",
    dirichlet_alpha: float = 0.5,
    seed: int = 0,
) -> Partition:
    """Partition ``train`` for VRCS; see the module docstring for the exact semantics.

    ``f_classes`` is used by the ``classes`` and ``frequent_rare`` schemes,
    ``rare_fraction`` by ``frequent_rare``, ``f_fraction`` by ``iid``; all are validated
    whatever the scheme. Raises ConfigError (naming the value) for bad input or when a
    part would be empty.
    """
    check_partition_config(
        scheme=scheme, server_fraction=server_fraction, clients_f=clients_f, clients_g=clients_g,
        f_classes=f_classes, rare_fraction=rare_fraction, f_fraction=f_fraction,
        server_similarity=server_similarity, client_split=client_split, dirichlet_alpha=dirichlet_alpha,
    )  # fmt: skip
    f_set = _check_against_data(train, num_classes, f_classes)
    rng = np.random.default_rng(seed)
    y = train.y.numpy()

    f_idx, g_idx = _assign_groups(y, scheme, f_set, rare_fraction, f_fraction, rng)
    if len(f_idx) == 0 or len(g_idx) == 0:
        raise ConfigError(
            f"scheme={shown(scheme)} leaves a group empty (f: {len(f_idx)}, g: {len(g_idx)} examples); "
            f"check f_classes={sorted(f_set)}"
        )

    # Server: n_f1 of group f and n_g1 of group g, their class mix skewed by server_similarity.
    n_f1 = round(server_fraction * len(f_idx))
    n_g1 = round(server_fraction * len(g_idx))
    if n_f1 == 0 or n_g1 == 0:
        raise ConfigError(
            f"server_fraction={server_fraction} gives an empty server part "
            f"(groups f/g have {len(f_idx)}/{len(g_idx)} examples)"
        )
    f_pool = rng.permutation(f_idx)
    g_pool = rng.permutation(g_idx)
    for grp, pool, taken, k in (("f", f_pool, n_f1, clients_f), ("g", g_pool, n_g1, clients_g)):
        if len(pool) - taken < k:
            raise ConfigError(
                f"too few examples for clients_{grp}={k}: group {grp} has {len(pool)}, "
                f"the server takes {taken} (server_fraction={server_fraction})"
            )
    take_f = _skewed_sample(f_pool, y, n_f1, server_similarity)
    take_g = _skewed_sample(g_pool, y, n_g1, server_similarity)
    server_f_idx, server_g_idx = rng.permutation(f_pool[take_f]), rng.permutation(g_pool[take_g])
    rest_f = np.delete(f_pool, take_f)
    rest_g = np.delete(g_pool, take_g)

    split = _split_iid if client_split == "iid" else _split_dirichlet
    parts_f = split(rest_f, y, clients_f, dirichlet_alpha, rng)
    parts_g = split(rest_g, y, clients_g, dirichlet_alpha, rng)
    shards = train.split([*parts_f, *parts_g])  # one copy, group f's clients then g's
    return Partition(
        clients={"f": shards[: len(parts_f)], "g": shards[len(parts_f) :]},
        server={"f": train.subset(server_f_idx), "g": train.subset(server_g_idx)},
        weights={"f": 0.5, "g": 0.5},
    )


def _assign_groups(
    y: np.ndarray,
    scheme: str,
    f_set: set[int],
    rare_fraction: float,
    f_fraction: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of group f and group g (step 1 of the module docstring)."""
    if scheme == "iid":
        perm = rng.permutation(len(y))
        n_f = round(f_fraction * len(y))
        return np.sort(perm[:n_f]), np.sort(perm[n_f:])
    in_f = np.isin(y, sorted(f_set))
    f_idx, g_idx = np.flatnonzero(in_f), np.flatnonzero(~in_f)
    if scheme == "classes":
        return f_idx, g_idx
    n_g = round(rare_fraction / (1.0 - rare_fraction) * len(f_idx))
    if n_g > len(g_idx):
        raise ConfigError(
            f"rare_fraction={rare_fraction} needs {n_g} rare-class examples but the rare classes "
            f"have only {len(g_idx)} (f classes have {len(f_idx)})"
        )
    return f_idx, _stratified_sample(g_idx, y, n_g, rng)


def _skewed_sample(pool: np.ndarray, y: np.ndarray, n: int, similarity: float) -> np.ndarray:
    """Positions in ``pool`` (already shuffled) of ``n`` examples whose class mix is
    ``similarity * π + (1 - similarity) * one-hot(most frequent class)``."""
    labels = y[pool]
    classes, counts = np.unique(labels, return_counts=True)
    share = similarity * counts / counts.sum()
    share[np.argmax(counts)] += 1.0 - similarity
    quota = _apportion(n, share)
    while (quota > counts).any():  # a class too small for its share: the rest go by the group's mix
        excess = int((quota - counts).clip(min=0).sum())
        quota = np.minimum(quota, counts)
        room = counts - quota
        quota += _apportion(excess, np.where(room > 0, counts, 0) / counts[room > 0].sum())
    return np.concatenate([np.flatnonzero(labels == c)[:q] for c, q in zip(classes, quota)])


def _apportion(n: int, share: np.ndarray) -> np.ndarray:
    """``n`` split in proportion to ``share`` (summing to 1) by largest remainder."""
    exact = n * share
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]] += 1
    return quota


def _stratified_sample(idx: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` of ``idx``, each class keeping its share (largest-remainder rounding)."""
    classes, counts = np.unique(y[idx], return_counts=True)
    exact = n * counts / counts.sum()
    quota = np.floor(exact).astype(int)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: n - quota.sum()]] += 1
    chosen = [rng.choice(idx[y[idx] == c], size=q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def _split_iid(
    idx: np.ndarray, y: np.ndarray, k: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Even random split of ``idx`` into ``k`` parts (``y`` and ``alpha`` unused)."""
    return np.array_split(rng.permutation(idx), k)


def _split_dirichlet(
    idx: np.ndarray, y: np.ndarray, k: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label-skewed split: per class, proportions ~ Dirichlet(alpha * 1_k); no empty part."""
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c in np.unique(y[idx]):
        members = rng.permutation(idx[y[idx] == c])
        cuts = (np.cumsum(rng.dirichlet(np.full(k, alpha)))[:-1] * len(members)).astype(int)
        for i, chunk in enumerate(np.split(members, cuts)):
            parts[i].append(chunk)
    out = [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]
    for i in range(k):  # len(idx) >= k is checked by the caller, so this terminates
        if len(out[i]) == 0:
            j = int(np.argmax([len(p) for p in out]))
            out[i], out[j] = out[j][-1:], out[j][:-1]
    return [rng.permutation(p) for p in out]


def _check_against_data(train: Dataset, num_classes: int, f_classes: Sequence[int] | None) -> set[int]:
    """The checks that need the data; returns the set of f classes."""
    if not _is_int(num_classes) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got num_classes={shown(num_classes)}")
    lo, hi = (int(train.y.min()), int(train.y.max())) if len(train) else (0, 0)
    if lo < 0 or hi >= num_classes:
        raise ConfigError(f"labels {lo}..{hi} do not fit num_classes={num_classes}")
    if f_classes is None:
        return set(range(num_classes // 2))
    f_list = [f_classes] if _is_int(f_classes) else list(f_classes)
    if not all(c < num_classes for c in f_list) or len(f_list) >= num_classes:
        raise ConfigError(
            f"f_classes must be distinct class ids in [0, {num_classes}) forming a non-empty "
            f"proper subset, got f_classes={f_list}"
        )
    return {int(c) for c in f_list}


def check_partition_config(
    *,
    scheme: str,
    server_fraction: float,
    clients_f: int,
    clients_g: int,
    f_classes: Sequence[int] | None = None,
    rare_fraction: float = 0.1,
    f_fraction: float = 0.5,
    server_similarity: float = 1.0,
    client_split: str = "iid",
    dirichlet_alpha: float = 0.5,
) -> None:
    """The checks that need no data (run on every sweep point before Ray starts)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown partition.scheme={shown(scheme)}; known: {', '.join(SCHEMES)}")
    if client_split not in CLIENT_SPLITS:
        raise ConfigError(f"unknown partition.client_split={shown(client_split)}; known: {', '.join(CLIENT_SPLITS)}")
    check_keys("partition", clients_f=(clients_f, "int >= 1"), clients_g=(clients_g, "int >= 1"),
               server_fraction=(server_fraction, "(0, 1)"), rare_fraction=(rare_fraction, "(0, 1)"),
               f_fraction=(f_fraction, "(0, 1)"), server_similarity=(server_similarity, "[0, 1]"),
               dirichlet_alpha=(dirichlet_alpha, "> 0"))  # fmt: skip
    if f_classes is not None:
        f_list = [f_classes] if _is_int(f_classes) or isinstance(f_classes, str) else list(f_classes)
        if not f_list or not all(_is_int(c) and c >= 0 for c in f_list) or len(set(f_list)) != len(f_list):
            raise ConfigError(f"partition.f_classes must be distinct non-negative class ids, got partition.f_classes={f_classes}")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


make_partition.check_config = check_partition_config  # what fedsweep.experiment.config.validate checks before any data loads
