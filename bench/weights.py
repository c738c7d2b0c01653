"""Time ``Weights`` ops on a ResNet-18 parameter set against bandwidth-limited primitives.

    python bench/weights.py

Each op is compared with the primitive that moves the same bytes, timed in the
same run over one flat buffer of the same size: ``torch.add(X, Y, out=Z)`` for
two-input ops, ``Z.copy_(X)`` for one-input ops (scale, clone, to_model,
from_grads), ``X.sum()`` (one read) for norm and ``torch.dot(X, Y)`` (two reads)
for dot. The last column is a naive dict-of-tensors implementation (per-tensor
loops, ``torch.cat`` for the reductions). Ops and their primitives run
interleaved, so load from other processes hits both alike; the table shows
medians. Target: every ratio within 1.5.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from argmin import print_argmin  # bench/argmin.py
from common import medians_ms, resnet18_cifar  # bench/common.py (this folder is on sys.path)

from fedsweep.core.weights import Weights

TARGET = 1.5


def op_rows(device: torch.device, repeats: int) -> list[tuple[str, float, str, float, float]]:
    torch.manual_seed(0)
    model = resnet18_cifar().to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    x = Weights.from_model(model).clone()
    y = Weights.from_grads(model)
    w = x.clone()
    a = 1e-3
    n = x.numel
    X, Y, Z = (torch.randn(n, device=device) for _ in range(3))
    nx = {k: v.clone() for k, v in x.items()}
    ny = {k: v.clone() for k, v in y.items()}
    nw = {k: v.clone() for k, v in x.items()}

    def cat(d: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([v.flatten() for v in d.values()])

    def naive_from_grads() -> dict[str, torch.Tensor]:
        return {k: p.grad.detach().clone() for k, p in model.named_parameters()}

    def naive_to_model() -> None:
        model.load_state_dict(nx, strict=False)

    def naive_axpy() -> dict[str, torch.Tensor]:
        return {k: a * nx[k] + ny[k] for k in nx}

    def naive_axpy_inplace() -> None:
        for k in nw:
            nw[k].add_(nx[k], alpha=a)

    add2 = ("torch.add(X, Y, out=Z)", lambda: torch.add(X, Y, out=Z))
    copy1 = ("Z.copy_(X)", lambda: Z.copy_(X))
    read1 = ("X.sum()", lambda: X.sum())
    read2 = ("torch.dot(X, Y)", lambda: torch.dot(X, Y))
    table = [  # (op, Weights, primitive, naive)
        ("add: x + y", lambda: x + y, add2, lambda: {k: nx[k] + ny[k] for k in nx}),
        ("sub: x - y", lambda: x - y, add2, lambda: {k: nx[k] - ny[k] for k in nx}),
        ("scale: a * x", lambda: a * x, copy1, lambda: {k: a * v for k, v in nx.items()}),
        ("axpy in place: w.axpy_(a, x)", lambda: w.axpy_(a, x), add2, naive_axpy_inplace),
        ("axpy new: Weights.axpy(a, x, y)", lambda: Weights.axpy(a, x, y), add2, naive_axpy),
        ("dot: Weights.dot(x, y)", lambda: Weights.dot(x, y), read2, lambda: torch.dot(cat(nx), cat(ny))),
        ("norm: x.norm()", lambda: x.norm(), read1, lambda: cat(nx).norm()),
        ("clone: x.clone()", lambda: x.clone(), copy1, lambda: {k: v.clone() for k, v in nx.items()}),
        ("to_model: x.to_model(model)", lambda: x.to_model(model), copy1, naive_to_model),
        ("from_grads: Weights.from_grads(model)", lambda: Weights.from_grads(model), copy1, naive_from_grads),
    ]
    rows = []
    for name, op, (prim_name, prim), naive in table:
        t = medians_ms({"op": op, "primitive": prim, "naive": naive}, repeats=repeats)
        rows.append((name, t["op"], prim_name, t["primitive"], t["naive"]))
    return rows


def ship_row(repeats: int) -> tuple[float, float, float]:
    """Median ms of ray.put + ray.get: a Weights, one numpy array of its size, a dict of tensors."""
    import ray

    x = Weights.from_model(resnet18_cifar()).clone()
    array = np.random.default_rng(0).standard_normal(x.numel, dtype=np.float32)
    naive = {k: v.clone() for k, v in x.items()}
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        back = ray.get(ray.put(x))
        assert back.readonly and (back - x).norm().item() == 0.0, "Ray round trip changed the Weights"
        del back
        # The first puts page in the object store's memory: warm up longer than for ops.
        round_trips = {"weights": lambda: ray.get(ray.put(x)), "array": lambda: ray.get(ray.put(array))}
        t = medians_ms(round_trips, repeats=repeats, warmup=8)
        t_naive = medians_ms({"naive": lambda: ray.get(ray.put(naive))}, repeats=5, warmup=1)["naive"]
    finally:
        ray.shutdown()
    return t["weights"], t["array"], t_naive


def main() -> None:
    load_before = os.getloadavg()[0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    probe = Weights.from_model(resnet18_cifar())
    print(
        f"ResNet-18 (CIFAR stem): {len(probe)} tensors, {probe.numel / 1e6:.2f} M float32 on {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians, ops interleaved with primitives\n"
    )
    print("| op | median ms | primitive (same traffic) | primitive ms | ratio | naive dict+cat ms |")
    print("|---|---:|---|---:|---:|---:|")
    worst = 0.0
    for name, t_op, prim_name, t_prim, t_naive in op_rows(device, repeats=25):
        ratio = t_op / t_prim
        worst = max(worst, ratio)
        print(f"| {name} | {t_op:.2f} | {prim_name} | {t_prim:.2f} | {ratio:.2f} | {t_naive:.2f} |")
    t_w, t_a, t_n = ship_row(repeats=25)
    worst = max(worst, t_w / t_a)
    print(
        f"| ship: ray.get(ray.put(x)) | {t_w:.2f} | ray.get(ray.put(numpy array)) | {t_a:.2f} | "
        f"{t_w / t_a:.2f} | {t_n:.2f} |"
    )
    print(f"\nworst ratio {worst:.2f} (target <= {TARGET}): {'PASS' if worst <= TARGET else 'FAIL'}")
    load = os.getloadavg()[0]
    print(f"1-min load average {load_before:.2f} before, {load:.2f} after on {os.cpu_count()} CPUs", end="")
    if max(load, load_before) > 1.0:
        print(": other processes were running; ops made of many kernels (foreach, chunked dot) suffer most", end="")
    print("\n")
    print_argmin(device)


if __name__ == "__main__":
    main()
