"""The argmin step's extra cost over a plain data-loss forward+backward (ResNet-18, batch 32).

    python bench/argmin.py

One step of the server's solve of ``argmin_x ⟨v, x⟩ + ‖x − c‖²/(2θ) + h1(x)``
needs the gradient ``∇h1(x) + v + (x − c)/θ``. Three ways, timed interleaved:

* data only: zero_grad, forward, cross-entropy, backward (the floor);
* closed form (what ``fedsweep.federation.solvers`` does): the same, then
  ``d = x − c`` into a preallocated buffer and ``grad += v + d/θ`` in place;
* autograd: the same objective with ``dot + norm**2`` differentiated by autograd.

Both forms' gradients are compared (max relative difference). Target: the
closed form costs at most 20% more than the data-only step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import medians_ms, resnet18_cifar  # bench/common.py (this folder is on sys.path)

from fedsweep.core.weights import Weights

TARGET_PERCENT = 20.0


def argmin_rows(device: torch.device, *, batch: int = 32, repeats: int = 15) -> dict[str, float]:
    torch.manual_seed(0)
    model = resnet18_cifar().to(device)
    x_in = torch.randn(batch, 3, 32, 32, device=device)
    y_in = torch.randint(0, 10, (batch,), device=device)
    params = Weights.from_model(model)
    center = params.clone()
    for t in center.tensors:
        t.add_(1e-3)
    linear = Weights.zeros_like(center)
    for t in linear.tensors:
        t.normal_()
    theta = 0.1
    diff = Weights.zeros_like(center)

    def data_only() -> None:
        model.zero_grad(set_to_none=False)
        F.cross_entropy(model(x_in), y_in).backward()

    def closed_form() -> None:
        data_only()
        Weights.sub(params.detach(), center, out=diff)
        Weights.grad_views(model).add_(linear).axpy_(1.0 / theta, diff)

    def autograd_form() -> None:
        model.zero_grad(set_to_none=False)
        d = params - center
        loss = F.cross_entropy(model(x_in), y_in) + Weights.dot(linear, params) + d.norm() ** 2 / (2 * theta)
        loss.backward()

    model.train()
    closed_form()
    g_closed = Weights.from_grads(model)
    autograd_form()
    g_auto = Weights.from_grads(model)
    rel = ((g_closed - g_auto).norm() / g_auto.norm()).item()

    t = medians_ms({"data": data_only, "closed": closed_form, "autograd": autograd_form}, repeats=repeats)
    return {**t, "rel_diff": rel}


def print_argmin(device: torch.device) -> None:
    r = argmin_rows(device)
    closed = 100 * (r["closed"] / r["data"] - 1)
    auto = 100 * (r["autograd"] / r["data"] - 1)
    print(f"argmin step on ResNet-18, batch 32, {device}, {torch.get_num_threads()} threads (medians)\n")
    print("| gradient of the argmin objective | median ms | extra over data-loss fwd+bwd |")
    print("|---|---:|---:|")
    print(f"| data loss only (fwd+bwd) | {r['data']:.1f} | — |")
    print(f"| closed form: grad += v + (x − c)/θ | {r['closed']:.1f} | {closed:+.1f}% |")
    print(f"| autograd through dot + norm² | {r['autograd']:.1f} | {auto:+.1f}% |")
    print(f"\nclosed form vs autograd gradient: relative difference (norm) {r['rel_diff']:.1e}")
    print(f"closed-form extra {closed:.1f}% (target <= {TARGET_PERCENT:.0f}%): {'PASS' if closed <= TARGET_PERCENT else 'FAIL'}")


if __name__ == "__main__":
    print_argmin(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
