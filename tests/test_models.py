"""The built-in model factories: shapes on every dataset's input, the CIFAR ResNet-18 surgery, seeding."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from fedsweep.task import load_dataset
from fedsweep.core.errors import ConfigError
from fedsweep.task.models import MODELS, build_model

INPUT_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]  # digits, (fashion-)mnist, cifar10


@pytest.mark.parametrize("shape", INPUT_SHAPES)
@pytest.mark.parametrize("name", MODELS)
def test_output_shape(name: str, shape: tuple[int, int, int]) -> None:
    if name == "lenet" and shape[1] < 16:
        with pytest.raises(ConfigError, match="model=lenet needs inputs of at least 16x16"):
            build_model(name, input_shape=shape, num_classes=7, seed=0)
        return
    if name == "cifar_cnn" and shape[1] < 10:
        with pytest.raises(ConfigError, match="model=cifar_cnn needs inputs of at least 10x10"):
            build_model(name, input_shape=shape, num_classes=7, seed=0)
        return
    model = build_model(name, input_shape=shape, num_classes=7, seed=0).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)


def test_cifar_cnn_is_pfl_researchs_benchmark_cnn() -> None:
    model = build_model("cifar_cnn", input_shape=(3, 32, 32), num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (3, 3), (0, 0)), (32, 64, (3, 3), (0, 0))]  # fmt: skip
    assert [(m.in_features, m.out_features) for m in linears] == [(2304, 128), (128, 10)]
    assert sum(p.numel() for p in model.parameters()) == 315_722


@pytest.mark.parametrize("norm", ["group", "none"])
def test_cnn_norm_options(norm: str) -> None:
    model = build_model("cnn", input_shape=(1, 28, 28), num_classes=10, norm=norm)
    kinds = {type(m) for m in model.modules()}
    assert (nn.GroupNorm in kinds) == (norm == "group")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_batch_norm_is_refused_with_the_reason(name: str) -> None:
    with pytest.raises(ConfigError, match="model.norm='batch' is not supported: BatchNorm's running statistics"):
        build_model(name, input_shape=(3, 32, 32), num_classes=10, norm="batch")


def test_resnet18_cifar_stem_and_size() -> None:
    model = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10)
    conv1 = model.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert conv1.in_channels == 3 and conv1.out_channels == 64
    assert isinstance(model.maxpool, nn.Identity)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 11_173_962  # the well-known CIFAR ResNet-18 count, ~11.2M (GroupNorm has BatchNorm's)


def test_resnet18_group_norm_and_channels() -> None:
    model = build_model("resnet18", input_shape=(1, 28, 28), num_classes=10, norm="group")
    assert model.conv1.in_channels == 1
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    groups = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert groups and all(m.num_channels % m.num_groups == 0 and m.num_groups <= 32 for m in groups)


@pytest.mark.parametrize("name", MODELS)
def test_seed_determinism_without_touching_global_rng(name: str) -> None:
    state = torch.get_rng_state()
    a = build_model(name, input_shape=(3, 32, 32), num_classes=10, seed=1)
    b = build_model(name, input_shape=(3, 32, 32), num_classes=10, seed=1)
    c = build_model(name, input_shape=(3, 32, 32), num_classes=10, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"name": "vgg"}, "name='vgg'"),
        ({"name": "cnn", "norm": "layer"}, "norm='layer'"),
        ({"name": "cnn", "input_shape": (8, 8)}, "input_shape=(8, 8)"),
        ({"input_shape": (0, 8)}, "input_shape=(0, 8)"),
        ({"num_classes": 0}, "num_classes=0"),
        ({"hidden": 0}, "hidden=0"),
    ],
)
def test_bad_arguments(kwargs: dict, needle: str) -> None:
    args = {"name": "mlp", "input_shape": (1, 8, 8), "num_classes": 10, **kwargs}
    with pytest.raises(ConfigError) as info:
        build_model(args.pop("name"), **args)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_mlp_trains_on_digits() -> None:
    data = load_dataset("digits", root="unused")
    model = build_model("mlp", input_shape=data.input_shape, num_classes=data.num_classes, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):  # full batch
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.train.x), data.train.y).backward()
        opt.step()
    with torch.no_grad():
        acc = (model(data.train.x).argmax(1) == data.train.y).float().mean().item()
    assert acc > 0.9


@pytest.mark.parametrize("threads", [2, 3])
def test_evaluation_on_threads_gives_the_numbers_of_one_thread(threads):
    """The test set is evaluated in the same pieces whatever the threads: the same loss and
    accuracy, bit for bit, and both as computed by hand over the whole set at once; torch's
    thread setting is the caller's again after."""
    from fedsweep.task.compute import CONV_EVAL_PIECE, evaluate
    from fedsweep.task.datasets import Dataset

    gen = torch.Generator().manual_seed(0)
    n = 2 * CONV_EVAL_PIECE + 37  # three pieces of a convolutional model, the last one short
    data = Dataset(torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 7, (n,), generator=gen))
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=7, seed=0)
    before = torch.get_num_threads()
    one, many = evaluate(model, data), evaluate(model, data, threads=threads)
    assert torch.get_num_threads() == before
    assert one == many
    with torch.no_grad():
        outputs = model.eval()(data.x)
    assert one[0] == pytest.approx(nn.functional.cross_entropy(outputs, data.y).item(), rel=1e-5)
    assert one[1] == (outputs.argmax(dim=1) == data.y).sum().item() / n


ALLOCATION = """
import ctypes, sys, torch
from fedsweep.core.allocator import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                              "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
kept = keep_freed_memory() if sys.argv[1] == "kept" else None
before = libc.mallinfo2().hblks
x = torch.empty(2 * 2**20)  # 8 MB, an evaluation piece's activations
print(kept, libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_computing_processes_keep_freed_memory_for_the_next_tensor():
    """With ``keep_freed_memory`` (every run and pool worker calls it) an 8 MB tensor comes
    from malloc's heap, where freed memory is reused; with glibc's defaults it is a fresh
    ``mmap`` whose pages fault in again on every forward pass."""
    found = {}
    for mode in ("default", "kept"):
        done = subprocess.run([sys.executable, "-c", ALLOCATION, mode], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        found[mode] = done.stdout.split()
    assert found == {"default": ["None", "1"], "kept": ["True", "0"]}


ARENAS = """
import ctypes, os, re, sys, tempfile, threading
from fedsweep.core.allocator import keep_freed_memory
if sys.argv[1] == "kept":
    keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
hold, start = [], threading.Barrier(4)
def allocate():
    start.wait()
    hold.append(libc.malloc(1 << 16))  # a thread's first malloc: a new arena while glibc's limit allows
threads = [threading.Thread(target=allocate) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
libc.fdopen.restype = ctypes.c_void_p
libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
with tempfile.TemporaryFile() as fh:
    stream = libc.fdopen(os.dup(fh.fileno()), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    fh.seek(0)
    print(len(re.findall(rb'<heap nr="', fh.read())))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_computing_processes_keep_at_most_two_malloc_arenas():
    """Each thread's first allocation gets an arena of its own (which keeps freed memory of its
    own) until glibc's limit: ``keep_freed_memory`` sets that limit to 2."""
    found = {}
    for mode in ("default", "kept"):
        done = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        found[mode] = int(done.stdout.split()[-1])
    assert found["kept"] <= 2 < found["default"], found
