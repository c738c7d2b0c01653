"""A federation's data (`Partition`) and the standard partitions of a training set into it.

A `Partition` is named client groups, each a tuple of client shards; each group G's weight
λ_G in the objective Σ_G λ_G f_G; and, optionally, the server's own data for some groups.
The standard partitions below make one group, ``"clients"``, and reproduce NIID-Bench (Li,
Diao, Chen, He, "Federated Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022,
arXiv:2102.02079; ``partition_data`` in its ``utils.py``). They draw from
``numpy.random.default_rng(seed)`` in the order of Flower's port
(``baselines/niid_bench/niid_bench/dataset_preparation.py``), so with ``server_fraction = 0``
``iid``, ``dirichlet`` and ``labels_per_client`` give Flower's split for the same seed.
With K classes and n clients:

=====================  ===================  ================================================
component              NIID-Bench           rule
=====================  ===================  ================================================
``iid``                homo                 a random permutation cut into n near-equal shards
``dirichlet``          noniid-labeldir      per class, client shares ~ Dir(α·1_n), see below
``labels_per_client``  noniid-#label<C>     client i holds class i mod K and C − 1 random
                                            others; each class split equally by its holders
``quantity_skew``      iid-diff-quantity    shard sizes ~ Dir(β·1_n), examples IID
``natural``            (LEAF-style)         one client per distinct ``train.client_ids``
=====================  ===================  ================================================

VRCS's two-group federation is `fedsweep.task.vrcs_partitions.make_partition`.

Each partition is a plain function named by a config's ``_target_`` and called as
``target(train, *, num_classes, seed, **keys)``; its ``check_config(**keys)`` checks the keys
before any data loads. With ``server_fraction`` s > 0 the server first takes a random sample
of round(s·N) examples (``natural``: of each client's), as ``server={"clients": ...}``, and
the rule splits the rest. Every client is non-empty and all parts are disjoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from fedsweep.core.checks import check, check_keys, is_number, shown
from fedsweep.core.errors import ConfigError
from fedsweep.task.datasets import Dataset

GROUP = "clients"  # the one group of the standard partitions
MAX_DRAWS = 1000  # Dirichlet draws tried for a min_size before giving up


@dataclass(frozen=True, eq=False)
class Partition:
    """A federation's data: named client groups (each a tuple of client shards), each group's
    weight in the objective, and the server's own data for some groups (optional)."""

    clients: Mapping[str, tuple[Dataset, ...]]  # group name -> its clients' shards; groups in order
    server: Mapping[str, Dataset] = field(default_factory=dict)  # server data per group (keys ⊆ clients'); empty = none
    weights: Mapping[str, float] | None = None  # λ_G > 0 summing to 1; None = by examples, λ_G = n_G / N

    def __post_init__(self) -> None:
        clients = {name: tuple(shards) for name, shards in self.clients.items()}
        server, groups = dict(self.server), list(clients)
        if not clients:
            raise ConfigError("a Partition needs at least one client group, got clients={}")
        for name, shards in clients.items():
            if not (isinstance(name, str) and name):
                raise ConfigError(f"group names must be non-empty strings, got {shown(name)}")
            sizes = [len(s) for s in shards]
            if not sizes or min(sizes) == 0:
                raise ConfigError(f"group {shown(name)} needs clients with examples, got sizes {sizes}")
        if unknown := set(server) - set(clients):
            raise ConfigError(f"server data for {sorted(map(str, unknown))} names no client group; groups: {groups}")
        if any(len(d) == 0 for d in server.values()):
            raise ConfigError(f"server data must not be empty, got sizes { {g: len(d) for g, d in server.items()} }")
        if self.weights is not None:
            weights = dict(self.weights)
            if set(weights) != set(clients):
                raise ConfigError(f"weights must have one entry per group {groups}, got {sorted(map(str, weights))}")
            if not all(is_number(w) and w > 0 for w in weights.values()) or abs(sum(weights.values()) - 1) > 1e-9:
                raise ConfigError(f"weights must be finite, > 0 and sum to 1, got weights={weights}")
            object.__setattr__(self, "weights", {name: weights[name] for name in groups})
        object.__setattr__(self, "clients", clients)
        object.__setattr__(self, "server", server)

    def group_weights(self) -> dict[str, float]:
        """λ_G per group: ``weights`` when given, else n_G / N with n_G the examples of G's
        clients (the server's data does not count)."""
        if self.weights is not None:
            return dict(self.weights)
        sizes = {name: sum(len(s) for s in shards) for name, shards in self.clients.items()}
        total = sum(sizes.values())
        return {name: n / total for name, n in sizes.items()}

    def describe(self) -> str:
        """Sizes and class counts of every group and server part, one line each."""
        parts = [s for shards in self.clients.values() for s in shards] + list(self.server.values())
        labelled = all(p.y.dim() == 1 and not torch.is_floating_point(p.y) for p in parts)
        n_labels = 1 + max(int(p.y.max()) for p in parts) if labelled else 0

        def counts(ds: tuple[Dataset, ...]) -> str:
            if not labelled:
                return ""
            return f", class counts {torch.bincount(torch.cat([d.y for d in ds]), minlength=n_labels).tolist()}"

        lines, weights = [], self.group_weights()
        for name, shards in self.clients.items():
            sizes = [len(s) for s in shards]
            lines.append(
                f"group {name}: {len(shards)} clients, sizes {min(sizes)}-{max(sizes)}, total {sum(sizes)}, "
                f"weight {weights[name]:.4g}{counts(shards)}"
            )
        lines += [f"server {name}: {len(d)} examples{counts((d,))}" for name, d in self.server.items()]
        return "\n".join(lines)


def iid(train: Dataset, *, num_classes: int, seed: int, clients: int, server_fraction: float = 0.0) -> Partition:
    """NIID-Bench's "homo": a random permutation of the examples cut by ``np.array_split``
    into ``clients`` shards (sizes differ by at most one). ``num_classes`` is unused."""
    _check_iid(clients=clients, server_fraction=server_fraction)
    rng = np.random.default_rng(seed)
    server, pool = _server_sample(len(train), server_fraction, rng)
    _check_room(len(pool), clients, 1, len(server))
    shards = np.array_split(pool[rng.choice(len(pool), len(pool), replace=False)], clients)
    return _federation(train, shards, server)


def dirichlet(
    train: Dataset, *, num_classes: int, seed: int, clients: int, alpha: float, min_size: int = 10,
    server_fraction: float = 0.0,
) -> Partition:  # fmt: skip
    """NIID-Bench's "noniid-labeldir": label skew over all clients, smaller ``alpha`` = more.

    For each class k in turn, its examples are shuffled and cut by shares p ~ Dir(α·1_n), except
    that a client already holding N/n examples or more gets none (its share is zeroed and the
    rest renormalised: the balance cap). The whole draw is repeated while the smallest client
    has fewer than ``min_size`` examples; ConfigError after ``MAX_DRAWS`` draws. A draw whose
    every share goes to capped clients (0/0 in NIID-Bench) counts as a failed draw.
    """
    _check_dirichlet(clients=clients, alpha=alpha, min_size=min_size, server_fraction=server_fraction)
    labels = _class_labels(train, num_classes)
    rng = np.random.default_rng(seed)
    server, pool = _server_sample(len(train), server_fraction, rng)
    _check_room(len(pool), clients, min_size, len(server))
    y = labels[pool]
    for _ in range(MAX_DRAWS):
        shards = _label_dirichlet_draw(y, num_classes, clients, alpha, rng)
        if shards is not None and min(len(s) for s in shards) >= min_size:
            return _federation(train, [pool[s] for s in shards], server)
    raise ConfigError(
        f"partition.alpha={alpha} gave no client split with partition.min_size={min_size} examples per client "
        f"in {MAX_DRAWS} draws ({len(pool)} examples, {clients} clients)"
    )


def _label_dirichlet_draw(
    y: np.ndarray, num_classes: int, clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray] | None:
    """One "noniid-labeldir" draw: positions in ``y`` per client; None if a class's every
    share went to clients already at the cap."""
    chunks: list[list[np.ndarray]] = [[] for _ in range(clients)]
    sizes = np.zeros(clients, dtype=np.int64)
    cap = len(y) / clients
    for k in range(num_classes):
        members = np.flatnonzero(y == k)
        rng.shuffle(members)
        shares = rng.dirichlet(np.full(clients, alpha)) * (sizes < cap)
        if shares.sum() == 0:
            return None
        cuts = (np.cumsum(shares / shares.sum()) * len(members)).astype(int)[:-1]
        for i, chunk in enumerate(np.split(members, cuts)):
            chunks[i].append(chunk)
            sizes[i] += len(chunk)
    return [np.concatenate(c) for c in chunks]


def labels_per_client(
    train: Dataset, *, num_classes: int, seed: int, clients: int, labels: int, server_fraction: float = 0.0
) -> Partition:
    """NIID-Bench's "#C = labels" ("noniid-#label<C>"): each client holds ``labels`` classes.

    Client i holds class i mod K and ``labels`` − 1 other distinct classes, drawn uniformly
    (a rejection loop, client by client). Each class's examples are shuffled and split
    equally (``np.array_split``) among the clients holding it, in client order; a class no
    client holds is left out. ``labels = 1`` gives client i class i mod K only.
    """
    _check_labels(clients=clients, labels=labels, server_fraction=server_fraction)
    if labels > num_classes:
        raise ConfigError(f"partition.labels must be in [1, num_classes={num_classes}], got partition.labels={labels}")
    y_all = _class_labels(train, num_classes)
    rng = np.random.default_rng(seed)
    server, pool = _server_sample(len(train), server_fraction, rng)
    held: list[list[int]] = []
    for i in range(clients):
        classes = [i % num_classes]
        while len(classes) < labels:
            c = int(rng.choice(num_classes, 1)[0])
            if c not in classes:
                classes.append(c)
        held.append(classes)
    y = y_all[pool]
    shards: list[list[np.ndarray]] = [[] for _ in range(clients)]
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        rng.shuffle(members)
        holders = [i for i in range(clients) if c in held[i]]
        if not holders:  # no client holds class c: its examples are left out
            continue
        for i, part in zip(holders, np.array_split(members, len(holders))):
            shards[i].append(pool[part])
    out = [np.concatenate(s) if s else np.empty(0, dtype=np.int64) for s in shards]
    for i, s in enumerate(out):
        if len(s) == 0:
            raise ConfigError(
                f"partition.labels={labels} leaves client {i} (classes {sorted(held[i])}) without examples: "
                f"partition.clients={clients} too many for the {len(pool)} examples"
            )
    return _federation(train, out, server)


def quantity_skew(
    train: Dataset, *, num_classes: int, seed: int, clients: int, beta: float, min_size: int = 10,
    server_fraction: float = 0.0,
) -> Partition:  # fmt: skip
    """NIID-Bench's "iid-diff-quantity": the examples are IID but the shard sizes are skewed.

    The examples are permuted; shares p ~ Dir(β·1_n) are drawn until min_i p_i·N ≥
    ``min_size`` (ConfigError after ``MAX_DRAWS`` draws); the permutation is cut at
    ``floor(cumsum(p)·N)``. Smaller ``beta`` = more unequal sizes. ``num_classes`` is unused.
    """
    _check_quantity(clients=clients, beta=beta, min_size=min_size, server_fraction=server_fraction)
    rng = np.random.default_rng(seed)
    server, pool = _server_sample(len(train), server_fraction, rng)
    _check_room(len(pool), clients, min_size, len(server))
    order = pool[rng.permutation(len(pool))]
    for _ in range(MAX_DRAWS):
        shares = rng.dirichlet(np.full(clients, beta))
        shares = shares / shares.sum()
        if np.min(shares * len(pool)) >= min_size:
            cuts = (np.cumsum(shares) * len(pool)).astype(int)[:-1]
            return _federation(train, np.split(order, cuts), server)
    raise ConfigError(
        f"partition.beta={beta} gave no client sizes with partition.min_size={min_size} examples per client "
        f"in {MAX_DRAWS} draws ({len(pool)} examples, {clients} clients)"
    )


def natural(train: Dataset, *, num_classes: int, seed: int, server_fraction: float = 0.0) -> Partition:
    """The data's own federation: one client per distinct ``train.client_ids`` (in sorted id
    order), each holding its examples in data order.

    The ids come from the data plug-in (``Dataset.client_ids`` of ``DataBundle.train``). With
    ``server_fraction`` s > 0 the server takes a random round(s·n_c) of each client's n_c
    examples, but never a client's last one. ``num_classes`` is unused; ``seed`` only draws
    the server's sample.
    """
    _check_natural(server_fraction=server_fraction)
    if train.client_ids is None:
        raise ConfigError(
            "partition=natural needs a dataset with client ids (DataBundle.client_ids, set as "
            "Dataset(x, y, client_ids=...) on the training set); this training set has none"
        )
    _, codes, counts = np.unique(train.client_ids.numpy(), return_inverse=True, return_counts=True)
    members = np.split(np.argsort(codes, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.default_rng(seed)
    server, shards = [], []
    for m in members:
        take = rng.choice(len(m), min(round(server_fraction * len(m)), len(m) - 1), replace=False)
        server.append(m[take])
        shards.append(np.delete(m, take))
    server_idx = np.concatenate(server)
    if server_fraction and len(server_idx) == 0:
        raise ConfigError(f"partition.server_fraction={server_fraction} gives the server no example of {len(train)}")
    return _federation(train, shards, server_idx)


def _server_sample(n: int, server_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The server's random sample of round(server_fraction · n) of ``range(n)`` and the rest,
    sorted (no draw when ``server_fraction`` is 0)."""
    if server_fraction == 0:
        return np.empty(0, dtype=np.int64), np.arange(n)
    n_server = round(server_fraction * n)
    if n_server == 0:
        raise ConfigError(f"partition.server_fraction={server_fraction} gives the server no example of {n}")
    server = rng.choice(n, n_server, replace=False)
    return server, np.setdiff1d(np.arange(n), server)


def _federation(train: Dataset, shards: list[np.ndarray], server: np.ndarray) -> Partition:
    """One group of ``shards`` (indices into ``train``), the server's part if non-empty."""
    return Partition(
        clients={GROUP: train.split(shards)},
        server={GROUP: train.subset(server)} if len(server) else {},
    )


def _class_labels(train: Dataset, num_classes: int) -> np.ndarray:
    """``train.y`` as numpy class ids; ConfigError unless they are integers in [0, num_classes)."""
    y = train.y.numpy()
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ConfigError(f"this partition needs integer class labels, got labels of shape {y.shape} and dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ConfigError(f"labels {y.min()}..{y.max()} do not fit num_classes={num_classes}")
    return y


def _check_room(n: int, clients: int, min_size: int, n_server: int) -> None:
    """ConfigError unless ``n`` examples can give ``clients`` clients ``min_size`` each."""
    if clients * min_size > n:
        at_least = f" with partition.min_size={min_size} each" if min_size > 1 else ""
        raise ConfigError(
            f"partition.clients={clients}{at_least} needs {clients * min_size} examples; "
            f"the clients have {n} (the server took {n_server})"
        )


def _check_iid(*, clients: int, server_fraction: float = 0.0) -> None:
    check_keys("partition", clients=(clients, "int >= 1"), server_fraction=(server_fraction, "[0, 1)"))


def _check_dirichlet(*, clients: int, alpha: float, min_size: int = 10, server_fraction: float = 0.0) -> None:
    _check_iid(clients=clients, server_fraction=server_fraction)
    check_keys("partition", alpha=(alpha, "> 0"), min_size=(min_size, "int >= 1"))


def _check_labels(*, clients: int, labels: int, server_fraction: float = 0.0) -> None:
    _check_iid(clients=clients, server_fraction=server_fraction)
    check("partition.labels", labels, "int >= 1")


def _check_quantity(*, clients: int, beta: float, min_size: int = 10, server_fraction: float = 0.0) -> None:
    _check_iid(clients=clients, server_fraction=server_fraction)
    check_keys("partition", beta=(beta, "> 0"), min_size=(min_size, "int >= 1"))


def _check_natural(*, server_fraction: float = 0.0) -> None:
    check("partition.server_fraction", server_fraction, "[0, 1)")


# what fedsweep.experiment.config.validate runs on a partition's keys before any data loads
iid.check_config = _check_iid
dirichlet.check_config = _check_dirichlet
labels_per_client.check_config = _check_labels
quantity_skew.check_config = _check_quantity
natural.check_config = _check_natural
