"""``Weights`` against a float64 per-tensor reference (STYLE.md §10), plus its contracts."""

from __future__ import annotations

import contextlib
import math
import pickle
import warnings
from collections.abc import Mapping
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fedsweep.core.weights as weights_module
from fedsweep.core.weights import Weights

INF = math.inf


# -- helpers ------------------------------------------------------------------------------


def model_with(shapes, seed=0) -> nn.Module:
    """A module whose parameters p0, p1, … have the given shapes."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Module()
    for i, shape in enumerate(shapes):
        model.register_parameter(f"p{i}", nn.Parameter(torch.randn(shape, generator=gen)))
    return model


def random_weights(shapes, seed, *, flat: bool) -> Weights:
    """Fresh Weights; ``flat`` ones own one contiguous buffer, the others one tensor each."""
    gen = torch.Generator().manual_seed(seed)
    w = Weights({f"p{i}": torch.randn(s, generator=gen) for i, s in enumerate(shapes)})
    return w.clone() if flat else w


def ref(w: Weights) -> dict[str, torch.Tensor]:
    return {n: t.detach().double() for n, t in w.items()}


def assert_matches(w: Weights, expected: Mapping[str, torch.Tensor], rtol=1e-5, atol=1e-6) -> None:
    assert w.names == tuple(expected)
    for name in expected:
        torch.testing.assert_close(w[name].detach().double(), expected[name], rtol=rtol, atol=atol)


def storage_ptrs(w: Weights) -> list[int]:
    return [t.data_ptr() for t in w.tensors]


def resnet18_like_shapes() -> list[tuple[int, ...]]:
    """The 62 parameter shapes of a CIFAR ResNet-18 (11.2 M values)."""
    shapes = [(64, 3, 3, 3), (64,), (64,)]
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for block in range(2):
            shapes += [(cout, cin, 3, 3), (cout,), (cout,), (cout, cout, 3, 3), (cout,), (cout,)]
            if block == 0 and (stride != 1 or cin != cout):
                shapes += [(cout, cin, 1, 1), (cout,), (cout,)]
            cin = cout
    return shapes + [(10, 512), (10,)]


class OpLog(TorchDispatchMode):
    """Records every aten op run inside it."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


# -- construction, mapping, model I/O ------------------------------------------------------


def test_mapping_interface_in_parameter_order():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    w = Weights.from_model(model)
    names = [n for n, _ in model.named_parameters()]
    assert isinstance(w, Mapping)
    assert list(w) == list(w.keys()) == names and w.names == tuple(names)
    assert len(w) == 4 and "2.bias" in w and "nope" not in w
    assert all(t is p for (n, t), (m, p) in zip(w.items(), model.named_parameters(), strict=True))
    assert w["0.weight"] is model[0].weight
    assert w.tensors == list(w.values()) and w.shapes == tuple(p.shape for p in model.parameters())
    assert w.numel == 4 * 3 + 3 + 3 * 2 + 2 and w.dtype == torch.float32 and w.device == torch.device("cpu")
    with pytest.raises(KeyError):
        w["nope"]
    with pytest.raises(TypeError):
        w["0.bias"] = torch.zeros(3)


def test_constructor_wraps_without_copy():
    d = {"a": torch.ones(2), "b": torch.zeros(3, 1)}
    w = Weights(d)
    assert w["a"] is d["a"] and w["b"] is d["b"]


def test_constructor_rejects_empty_and_mixed():
    with pytest.raises(ValueError, match="at least one"):
        Weights({})
    with pytest.raises(ValueError, match="'b'"):
        Weights({"a": torch.ones(2), "b": torch.ones(2, dtype=torch.float64)})
    with pytest.raises(TypeError):
        Weights({"a": [1.0]})


@pytest.mark.parametrize("flat_target", [True, False])
def test_from_model_gradient_flows_to_parameters(flat_target):
    model = model_with([(3, 4), (4,), ()])
    x_t = random_weights([(3, 4), (4,), ()], seed=1, flat=flat_target)
    loss = (Weights.from_model(model) - x_t).norm() ** 2 / 2
    loss.backward()
    for (name, p), target in zip(model.named_parameters(), x_t.tensors, strict=True):
        torch.testing.assert_close(p.grad, p.detach() - target, msg=name)


def test_from_grads_is_a_copy_unchanged_by_later_backward():
    model = model_with([(3, 2), (2,)])
    (model.p0.sum() * 2 + model.p1.sum()).backward()
    g = Weights.from_grads(model)
    assert not any(t.requires_grad for t in g.tensors)
    model.zero_grad(set_to_none=False)
    (model.p0.sum() * 5).backward()
    model.zero_grad(set_to_none=True)
    assert_matches(g, {"p0": torch.full((3, 2), 2.0, dtype=torch.float64), "p1": torch.ones(2, dtype=torch.float64)})


def test_from_grads_gives_zeros_where_grad_is_none():
    model = model_with([(3,), (2, 2)])
    model.p1.sum().backward()
    g = Weights.from_grads(model)
    assert model.p0.grad is None
    assert torch.equal(g["p0"], torch.zeros(3)) and torch.equal(g["p1"], torch.ones(2, 2))


def test_grad_views_are_the_live_grads():
    model = model_with([(3,), (2,)])
    model.p0.sum().backward()
    grads = Weights.grad_views(model)
    assert grads["p0"] is model.p0.grad
    assert torch.equal(model.p1.grad, torch.zeros(2))  # allocated where it was None
    grads.axpy_(2.0, Weights.from_model(model).detach())
    torch.testing.assert_close(model.p0.grad, 1 + 2 * model.p0.detach())
    torch.testing.assert_close(model.p1.grad, 2 * model.p1.detach())


@pytest.mark.parametrize("source", ["graph", "grads", "flat"])
def test_to_model_copies_data_and_links_no_graph(source):
    src, dst = model_with([(3, 2), (2,)], seed=0), model_with([(3, 2), (2,)], seed=1)
    (src.p0.sum() * 3).backward()
    w = {
        "graph": Weights.from_model(src) * 2,  # has a graph back to src
        "grads": Weights.from_grads(src),
        "flat": Weights.from_model(src).clone(),
    }[source]
    expected = ref(w)
    ptrs = [p.data_ptr() for p in dst.parameters()]
    w.to_model(dst)
    for p, name in zip(dst.parameters(), w.names, strict=True):
        assert p.is_leaf and p.grad_fn is None and p.requires_grad
        torch.testing.assert_close(p.detach().double(), expected[name])
    assert [p.data_ptr() for p in dst.parameters()] == ptrs
    dst.p0.sum().backward()
    assert src.p1.grad is None  # nothing flowed back to the source


def test_to_model_rejects_mismatch_naming_it():
    w = Weights.from_model(model_with([(3, 2), (2,)])).clone()
    with pytest.raises(ValueError, match="'p1'.*\\(2,\\).*\\(5,\\)"):
        w.to_model(model_with([(3, 2), (5,)]))
    other = nn.Module()
    other.q = nn.Parameter(torch.zeros(3, 2))
    other.p1 = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="'p0'.*'q'"):
        w.to_model(other)
    with pytest.raises(ValueError, match="'p2'"):
        w.to_model(model_with([(3, 2), (2,), (1,)]))


def test_clone_detaches_with_own_storage():
    model = model_with([(3, 2), (2,)])
    c = Weights.from_model(model).clone()
    assert not any(t.requires_grad for t in c.tensors)
    assert not set(storage_ptrs(c)) & {p.data_ptr() for p in model.parameters()}
    c.add_(c)
    torch.testing.assert_close(c["p0"], 2 * model.p0.detach())


def test_detach_shares_storage_and_freeze_stops_gradients():
    model = model_with([(3,), (2, 2)])
    w = Weights.from_model(model)
    d = w.detach()
    assert storage_ptrs(d) == [p.data_ptr() for p in model.parameters()]
    assert not any(t.requires_grad for t in d.tensors)
    frozen = w.freeze()
    assert isinstance(frozen, Weights) and not any(t.requires_grad for t in frozen.tensors)
    Weights.dot(w, frozen).backward()  # d/dw <w, stop(w)> = stop(w), not 2w
    torch.testing.assert_close(model.p0.grad, model.p0.detach())


def test_zeros_like_and_to():
    w = Weights.from_model(model_with([(3,), (2, 2)]))
    z = Weights.zeros_like(w)
    assert z.names == w.names and z.shapes == w.shapes and z.dtype == w.dtype and z.device == w.device
    assert not any(t.requires_grad for t in z.tensors) and z.norm().item() == 0.0
    assert w.to("cpu") is w


def test_operators_accept_numbers_and_0d_tensors_only():
    x = random_weights([(3,), (2, 2)], seed=0, flat=True)
    expected = {n: 2.5 * t for n, t in ref(x).items()}
    assert_matches(torch.tensor(2.5) * x, expected)
    assert_matches(x * torch.tensor(2.5), expected)
    assert_matches(x * 2.5, expected)
    assert_matches(5 * x / 2, expected)
    with pytest.raises(TypeError):
        x * torch.ones(3)
    with pytest.raises(TypeError):
        x * x
    with pytest.raises(TypeError):
        x + 1.0


@pytest.mark.parametrize("flat", [True, False])
def test_mismatch_errors_name_first_difference(flat):
    x = random_weights([(3,), (2, 2)], seed=0, flat=flat)
    renamed = Weights({"p0": torch.ones(3), "q": torch.ones(2, 2)})
    reshaped = Weights({"p0": torch.ones(3), "p1": torch.ones(4)})
    longer = Weights({"p0": torch.ones(3), "p1": torch.ones(2, 2), "p2": torch.ones(1)})
    ops = (lambda o: x + o, lambda o: Weights.dot(x, o), lambda o: x.clone().add_(o), lambda o: Weights.axpy(1.0, x, o))
    for op in ops:
        with pytest.raises(ValueError, match="'p1'.*'q'"):
            op(renamed)
        with pytest.raises(ValueError, match="'p1'.*\\(2, 2\\).*\\(4,\\)"):
            op(reshaped)
        with pytest.raises(ValueError, match="'p2'"):
            op(longer)


@pytest.mark.parametrize("flat_inputs", [True, False])
@pytest.mark.parametrize("flat_out", [True, False])
def test_out_forms_write_in_place_without_allocating(flat_inputs, flat_out):
    shapes = [(3, 4), (4,)]
    x = random_weights(shapes, 0, flat=flat_inputs)
    y = random_weights(shapes, 1, flat=flat_inputs)
    out = random_weights(shapes, 2, flat=flat_out)
    rx, ry = ref(x), ref(y)
    ptrs = storage_ptrs(out)
    assert Weights.add(x, y, alpha=0.5, out=out) is out
    assert_matches(out, {n: rx[n] + 0.5 * ry[n] for n in rx})
    assert Weights.sub(x, y, out=out) is out
    assert_matches(out, {n: rx[n] - ry[n] for n in rx})
    assert Weights.axpy(-2.0, x, y, out=out) is out
    assert_matches(out, {n: -2 * rx[n] + ry[n] for n in rx})
    assert storage_ptrs(out) == ptrs


@pytest.mark.parametrize("flat", [True, False])
def test_out_may_alias_an_input(flat):
    x = random_weights([(5,), (2, 3)], 0, flat=flat)
    y = random_weights([(5,), (2, 3)], 1, flat=flat)
    rx, ry = ref(x), ref(y)
    Weights.sub(x, y, out=y)  # y ← x − y
    assert_matches(y, {n: rx[n] - ry[n] for n in rx})
    Weights.axpy(3.0, x, x, out=x)  # x ← 4x
    assert_matches(x, {n: 4 * rx[n] for n in rx})


def test_inplace_ops_return_self_and_need_no_grad_mode():
    model = model_with([(3,), (2,)])
    w = Weights.from_model(model)
    step = random_weights([(3,), (2,)], 1, flat=True)
    before = ref(w)
    assert w.axpy_(-0.1, step) is w  # an SGD step straight on the parameters
    assert_matches(w, {n: before[n] - 0.1 * s for n, s in ref(step).items()})
    assert all(p.is_leaf and p.requires_grad for p in model.parameters())


# -- pickling and shipping ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "model", "bfloat16"])
def test_pickle_round_trip(kind):
    model = model_with([(3, 2), (2,), ()])
    w = {
        "flat": Weights.from_model(model).clone(),
        "model": Weights.from_model(model),
        "bfloat16": Weights.from_model(model.to(torch.bfloat16)).clone(),
    }[kind]
    back = pickle.loads(pickle.dumps(w))
    assert back.names == w.names and back.shapes == w.shapes and back.dtype == w.dtype
    assert not back.readonly and not any(t.requires_grad for t in back.tensors)
    for name in w:
        assert torch.equal(back[name], w[name].detach())
    back.add_(back)  # writable


def unpickle_readonly(w: Weights) -> tuple[Weights, int]:
    """What Ray does: pickle 5 with out-of-band buffers, read back from read-only memory."""
    buffers = []
    data = pickle.dumps(w, protocol=5, buffer_callback=buffers.append)
    return pickle.loads(data, buffers=[memoryview(b).toreadonly() for b in buffers]), len(buffers)


def test_unpickled_from_readonly_memory_is_zero_copy_and_readonly():
    w = random_weights([(300,), (20, 5), ()], 0, flat=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the non-writable numpy warning is suppressed
        back, n_buffers = unpickle_readonly(w)
    assert n_buffers == 1  # one contiguous array, not one per tensor
    assert back.readonly and back.detach().readonly
    assert_matches(back, ref(w), rtol=0, atol=0)
    for op in (
        lambda: back.add_(w),
        lambda: back.zero_(),
        lambda: back.mul_(2.0),
        lambda: back.copy_(w),
        lambda: Weights.add(w, w, out=back),
    ):
        with pytest.raises(RuntimeError, match="read-only"):
            op()
    assert_matches(back, ref(w), rtol=0, atol=0)
    assert_matches(back + w, {n: 2 * t for n, t in ref(w).items()})
    writable = back.clone()
    assert not writable.readonly and writable.add_(w) is writable


def test_to_model_from_readonly_copies_exactly_once():
    model = model_with([(30, 2), (2,)])
    back, _ = unpickle_readonly(Weights.from_model(model_with([(30, 2), (2,)], seed=5)).clone())
    with OpLog() as log:
        back.to_model(model)
    assert log.ops == ["aten._foreach_copy_.default"]
    assert_matches(Weights.from_model(model), ref(back), rtol=0, atol=0)


def test_pooled_buffers_are_reused_only_when_unreferenced():
    shapes = [(300_000,), (10,)]  # over the pool's 1 MiB floor
    kept = random_weights(shapes, 0, flat=True)["p0"]  # a view outlives its Weights
    expected = kept.clone()
    first = random_weights(shapes, 1, flat=True)
    ptr = first["p0"].data_ptr()
    del first
    others = [random_weights(shapes, 2, flat=True) for _ in range(3)]
    assert torch.equal(kept, expected)
    assert ptr in {o["p0"].data_ptr() for o in others}  # the released buffer came back


# -- accuracy over a ResNet-18-sized parameter set ---------------------------------------


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("values", ["uniform", "normal"])
def test_dot_and_norm_accurate_over_11m_float32_values(flat, values):
    shapes = resnet18_like_shapes()
    gen = torch.Generator().manual_seed(0)
    # positive values (large sums) are where one float32 reduction drifts most: uniform ones
    # measured 2.5e-5 for a single torch.dot over everything
    draw = {"uniform": torch.rand, "normal": lambda s, generator: 1 + torch.randn(s, generator=generator)}[values]
    x = Weights({f"p{i}": draw(s, generator=gen) for i, s in enumerate(shapes)})
    y = Weights({n: draw(t.shape, generator=gen) for n, t in x.items()})
    if flat:
        x, y = x.clone(), y.clone()
    assert x.numel > 11_000_000 and len(x) == 62
    x64, y64 = [t.double().flatten() for t in x.tensors], [t.double().flatten() for t in y.tensors]
    dot64 = sum(torch.dot(a, b) for a, b in zip(x64, y64))
    assert abs(Weights.dot(x, y).double() - dot64) / dot64 <= 1e-6
    for p in (1, 2, INF):
        norm64 = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(a, p) for a in x64]), p)
        assert abs(x.norm(p).double() - norm64) / norm64 <= 1e-6, p


# -- properties against a float64 per-tensor reference ------------------------------------

shape_lists = st.lists(st.lists(st.integers(1, 5), max_size=3).map(tuple), min_size=1, max_size=4)
numbers = st.floats(0.01, 3) | st.floats(-3, -0.01)
chunk_sizes = st.sampled_from([1, 3, 7, 1 << 15])
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def chunked(size: int):
    """Reductions over chunks of ``size`` values, to test chunk boundaries on small tensors."""
    with mock.patch.object(weights_module, "_DOT_CHUNK", size), mock.patch.object(weights_module, "_NORM_CHUNK", size):
        yield


def as_scalar(value: float, tensor: bool):
    return torch.tensor(value) if tensor else value


@PROPERTY
@given(
    shapes=shape_lists,
    seed=st.integers(0, 2**16),
    flats=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    a=numbers,
    tensor_scalar=st.booleans(),
    p=st.sampled_from([1, 2, 3, INF]),
    chunk=chunk_sizes,
)
def test_ops_match_float64_reference(shapes, seed, flats, a, tensor_scalar, p, chunk):
    x = random_weights(shapes, seed, flat=flats[0])
    y = random_weights(shapes, seed + 1, flat=flats[1])
    rx, ry = ref(x), ref(y)
    s = as_scalar(a, tensor_scalar)
    each = lambda f: {n: f(rx[n], ry[n]) for n in rx}  # noqa: E731
    assert_matches(x + y, each(lambda u, v: u + v))
    assert_matches(x - y, each(lambda u, v: u - v))
    assert_matches(-x, each(lambda u, v: -u))
    assert_matches(x * s, each(lambda u, v: u * a))
    assert_matches(s * x, each(lambda u, v: u * a))
    assert_matches(x / s, each(lambda u, v: u / a))
    assert_matches(Weights.add(x, y, alpha=a), each(lambda u, v: u + a * v))
    assert_matches(Weights.sub(x, y), each(lambda u, v: u - v))
    assert_matches(Weights.axpy(s, x, y), each(lambda u, v: a * u + v))
    out = random_weights(shapes, seed + 2, flat=flats[2])
    assert_matches(Weights.axpy(s, x, y, out=out), each(lambda u, v: a * u + v))

    with chunked(chunk):
        dot = Weights.dot(x, y)
        norm = x.norm(p)
    x64, y64 = [t.flatten() for t in rx.values()], [t.flatten() for t in ry.values()]
    assert dot.shape == () and dot.dtype == torch.float32
    scale = sum(torch.dot(u.abs(), v.abs()) for u, v in zip(x64, y64))
    assert abs(dot.double() - sum(torch.dot(u, v) for u, v in zip(x64, y64))) <= 1e-6 * scale + 1e-6
    norm64 = torch.linalg.vector_norm(torch.cat(x64), p)
    assert norm.shape == () and abs(norm.double() - norm64) <= 1e-6 * norm64 + 1e-7

    w = random_weights(shapes, seed + 3, flat=flats[2])
    rw = ref(w)
    w.add_(x, 0.5).sub_(y)
    rw = {n: rw[n] + 0.5 * rx[n] - ry[n] for n in rw}
    assert_matches(w, rw)
    w.mul_(s).div_(as_scalar(2.0, tensor_scalar))
    rw = {n: rw[n] * a / 2 for n in rw}
    assert_matches(w, rw)
    w.axpy_(s, x)
    rw = {n: rw[n] + a * rx[n] for n in rw}
    assert_matches(w, rw)
    w.lerp_(y, as_scalar(0.25, tensor_scalar))
    rw = {n: rw[n] + 0.25 * (ry[n] - rw[n]) for n in rw}
    assert_matches(w, rw)
    assert_matches(w.copy_(x), rx, rtol=0, atol=0)
    assert_matches(w.zero_(), {n: torch.zeros_like(t) for n, t in rx.items()}, rtol=0, atol=0)


WEIGHTS_OPS = SimpleNamespace(
    sub=lambda u, v: u - v, mul=lambda u, s: u * s, div=lambda u, d: u / d, neg=lambda u: -u,
    dot=Weights.dot, norm=Weights.norm, axpy=Weights.axpy,
)
REFERENCE_OPS = SimpleNamespace(  # dicts of float64 tensors, one op per tensor
    sub=lambda u, v: {n: u[n] - v[n] for n in u},
    mul=lambda u, s: {n: u[n] * s for n in u},
    div=lambda u, d: {n: u[n] / d for n in u},
    neg=lambda u: {n: -u[n] for n in u},
    dot=lambda u, v: sum((u[n] * v[n]).sum() for n in u),
    norm=lambda u, p: torch.linalg.vector_norm(torch.cat([t.flatten() for t in u.values()]), p),
    axpy=lambda a, u, v: {n: a * u[n] + v[n] for n in u},
)


def objective(ops, w, x_t, c, s, a, p):
    """⟨w·s − x_t, c⟩ + ‖w − x_t‖²/2 + ‖(a·w + c)/3‖_p − ⟨−w, c⟩."""
    linear = ops.dot(ops.sub(ops.mul(w, s), x_t), c)
    quadratic = ops.norm(ops.sub(w, x_t), 2) ** 2 / 2
    return linear + quadratic + ops.norm(ops.div(ops.axpy(a, w, c), 3), p) - ops.dot(ops.neg(w), c)


@PROPERTY
@given(
    shapes=shape_lists,
    seed=st.integers(0, 2**16),
    flat=st.booleans(),
    a=numbers,
    p=st.sampled_from([1, 2, 3]),
    chunk=chunk_sizes,
)
def test_autograd_through_from_model_matches_float64_reference(shapes, seed, flat, a, p, chunk):
    model = model_with(shapes, seed)
    x_t = random_weights(shapes, seed + 1, flat=flat)
    c = random_weights(shapes, seed + 2, flat=flat)
    s = torch.tensor(1.5, requires_grad=True)
    with chunked(chunk):
        value = objective(WEIGHTS_OPS, Weights.from_model(model), x_t, c, s, a, p)
    value.backward()

    leaves = {n: t.detach().double().requires_grad_() for n, t in model.named_parameters()}
    s64 = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    value64 = objective(REFERENCE_OPS, leaves, ref(x_t), ref(c), s64, a, p)
    value64.backward()
    torch.testing.assert_close(value.detach().double(), value64.detach(), rtol=1e-5, atol=1e-5)
    for (name, param), leaf in zip(model.named_parameters(), leaves.values(), strict=True):
        torch.testing.assert_close(param.grad.double(), leaf.grad, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-5)
