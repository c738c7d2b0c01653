"""Inputs a user may be handed (a config, a sweep file, a run or sweep folder) cannot run code or
write elsewhere, and every bad one stops in one line naming it (issue 19, the input items).

Each case runs the command in process (``run_main`` / ``tune_main``) and reads its stderr."""

from __future__ import annotations

import sys

import pytest

from fedsweep.cli import run_main, tune_main

MARKER_MODULE = "fedsweep_untrusted_marker"


def one_line_error(capsys, needle: str) -> str:
    """stderr is one ``error: ...`` line (two at most) that names ``needle``."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) <= 2, err
    assert needle in err, err
    return err


@pytest.fixture
def marker_module(tmp_path, monkeypatch):
    """An importable module that writes a file when imported: if it is ever imported, the file shows it."""
    (tmp_path / f"{MARKER_MODULE}.py").write_text(
        f"import pathlib\npathlib.Path({str(tmp_path / 'imported')!r}).write_text('ran')\ndef make(**kw):\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "imported"
    sys.modules.pop(MARKER_MODULE, None)


# --- 1. _target_ names only fedsweep, torch.optim and the named plug-ins ------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("data._target_=os.makedirs", "data._target_='os.makedirs'"),
        ("model._target_=builtins.open", "model._target_='builtins.open'"),
        ("+method.extra={_target_:subprocess.run,args:[touch,x]}", "method.extra._target_='subprocess.run'"),
        ("solver=steps solver.optimizer._target_=shutil.rmtree", "solver.optimizer._target_='shutil.rmtree'"),
        (f"runtime._target_={MARKER_MODULE}.make", f"runtime._target_='{MARKER_MODULE}.make'"),
    ],
)
def test_a_target_outside_the_allowed_packages_stops_before_it_is_imported(tmp_path, capsys, marker_module, override,
                                                                           key):  # fmt: skip
    assert run_main([*override.split(), f"log_dir={tmp_path / 'run'}", "+data.name=" + str(tmp_path / "made")]) == 2
    err = one_line_error(capsys, key)
    assert "outside the allowed packages" in err and "plugins" in err
    assert not marker_module.exists() and MARKER_MODULE not in sys.modules  # never imported
    assert not (tmp_path / "run").exists() and not (tmp_path / "made").exists() and not (tmp_path / "x").exists()


def test_a_plugin_package_is_allowed_once_named_and_not_before(tmp_path, capsys, marker_module):
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "fedsgd.yaml").write_text("_target_: tests.readme_plugin.FedSGD\nlr: 0.1\n")
    args = ["--config-dir", str(tmp_path), "method=fedsgd", "--cfg"]
    assert run_main(args) == 2  # a --config-dir file is held to the same rule
    one_line_error(capsys, "method._target_='tests.readme_plugin.FedSGD' is outside the allowed packages")
    assert run_main(["plugins=[tests.readme_plugin]", *args]) == 0
    assert "tests.readme_plugin.FedSGD" in capsys.readouterr().out
    assert run_main(["plugins=[os]", "--cfg"]) == 2  # the standard library is never a plug-in
    one_line_error(capsys, "plugins names 'os', which cannot be a plug-in")


def test_a_sweep_grid_cannot_name_other_code(tmp_path, capsys, marker_module):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\ngrid:\n  data._target_: [fedsweep.task.load_digits, {MARKER_MODULE}.make]\n")
    assert tune_main([str(sweep), "--results", str(tmp_path / "results")]) == 2
    one_line_error(capsys, f"data._target_='{MARKER_MODULE}.make' is outside the allowed packages")
    assert not marker_module.exists() and not (tmp_path / "results").exists()
    sweep.write_text("name: s\nplugins: [os]\ngrid:\n  rounds: [1]\n")
    assert tune_main([str(sweep), "--results", str(tmp_path / "results")]) == 2
    one_line_error(capsys, "plugins names 'os'")


# --- 2. a run folder is never silently reused ----------------------------------------------------


def test_a_second_run_into_a_run_folder_stops_and_changes_nothing(tmp_path, capsys):
    from fedsweep.experiment.checkpoint import checkpoint_path, saved_rounds

    log_dir = tmp_path / "run"
    assert run_main(["rounds=2", "checkpoint.every=1", f"log_dir={log_dir}"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in log_dir.rglob("*") if p.is_file()}
    assert saved_rounds(log_dir) == [1, 2]
    assert run_main(["method.theta=0.3", "rounds=1", "checkpoint.every=1", f"log_dir={log_dir}"]) != 0
    newest = checkpoint_path(log_dir, 2)
    err = one_line_error(capsys, f"log_dir {log_dir} holds a run already")
    assert f"checkpoint.resume={newest}" in err  # how to continue it
    assert {p: p.read_bytes() for p in log_dir.rglob("*") if p.is_file()} == before  # nothing replaced or deleted
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert run_main(["rounds=1", f"log_dir={tmp_path / 'other'}"]) != 0
    one_line_error(capsys, "holds other files; choose a new or empty log_dir")
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]
    # resuming the run it holds is what the folder is for
    assert run_main(["rounds=3", "checkpoint.every=1", f"checkpoint.resume={newest}", f"log_dir={log_dir}"]) == 0
    assert saved_rounds(log_dir) == [2, 3]


# --- 3. every numeric key has a finite, meaningful range ------------------------------------------


@pytest.mark.parametrize(
    "override, needle",
    [
        ("method.theta=inf", "method.theta must be a finite number > 0, got method.theta=inf"),
        ("method=sliding method.theta=nan", "method.theta must be a finite number > 0"),
        ("solver.tolerance=inf", "solver.tolerance must be a finite number > 0"),
        ("solver=steps solver.optimizer.lr=inf", "solver.optimizer.lr must be a finite number > 0, got solver.optimizer.lr=inf"),
        ("solver=steps solver.optimizer.lr=nan", "solver.optimizer.lr must be a finite number > 0"),
        ("method=fedadam method.server_optimizer.eps=inf", "method.server_optimizer.eps must be a finite number >= 0"),
        ("method=fedprox method.mu=inf", "method.mu must be a finite number >= 0"),
        ("method=fedavg method.lr=-0.1", "method.lr must be a finite number > 0"),
        ("partition.client_split=dirichlet partition.dirichlet_alpha=inf", "partition.dirichlet_alpha must be a finite number > 0"),
        ("partition=dirichlet partition.alpha=0", "partition.alpha must be a finite number > 0"),
        (f"seed={2**70}", "seed must be an integer in [0, 4294967295]"),
        ("seeds.data=-1", "seeds.data must be an integer in [0, 4294967295] or null"),
        ("rounds=0", "rounds must be a positive integer"),
    ],
)  # fmt: skip
def test_numbers_out_of_their_range_stop_in_one_line(tmp_path, capsys, override, needle):
    assert run_main([*override.split(), f"log_dir={tmp_path / 'run'}"]) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "run").exists()


# --- 4, 5. YAML a user hands over: no alias bombs, UTF-8 text, long values cut -------------------

BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
                                                           for p, c in zip("abcdefgh", "bcdefghi")])  # fmt: skip


@pytest.mark.parametrize("where", ["mode", "grid"])
def test_a_yaml_alias_bomb_in_a_sweep_file_stops_in_one_line(tmp_path, capsys, where):
    sweep = tmp_path / "bomb.yaml"
    body = f"mode: *i\ngrid:\n  rounds: [1]\n" if where == "mode" else "grid:\n  method.theta: *i\n"
    anchors = BOMB.replace("\n", "\n  ")  # under an unknown key: the aliases are refused before any key is checked
    sweep.write_text(f"name: bomb\nx:\n  {anchors}\n{body}")
    assert len(sweep.read_bytes()) < 1500  # expanded: 10**9 strings
    assert tune_main([str(sweep), "--results", str(tmp_path / "results")]) == 2
    err = one_line_error(capsys, f"{sweep}: YAML aliases are not allowed")
    assert len(err) < 300 and not (tmp_path / "results").exists()


def test_an_alias_in_a_config_dir_file_stops_before_hydra_expands_it(tmp_path, capsys):
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "bomb.yaml").write_text(f"_target_: fedsweep.algorithms.VRCS\n{BOMB}\ntheta: 0.1\n")
    assert run_main(["--config-dir", str(tmp_path), "method=bomb", "--cfg"]) == 2
    one_line_error(capsys, "bomb.yaml: YAML aliases are not allowed (*a at line 3)")


@pytest.mark.parametrize("content", [b"\xff\xfe\x00b\x00i\x00n", bytes(range(256)), "name: caf\xe9\n".encode("latin-1")])
def test_a_sweep_file_that_is_not_utf8_text_stops_in_one_line(tmp_path, capsys, content):
    sweep = tmp_path / "x.yaml"
    sweep.write_bytes(content)
    assert tune_main([str(sweep), "--results", str(tmp_path / "results")]) == 2
    one_line_error(capsys, f"{sweep} is not UTF-8 text")


def test_long_values_are_cut_in_error_messages(tmp_path, capsys):
    sweep = tmp_path / "long.yaml"
    sweep.write_text("name: long\nmode: " + "x" * 100_000 + "\ngrid:\n  rounds: [1]\n")
    assert tune_main([str(sweep), "--results", str(tmp_path / "results")]) == 2
    err = one_line_error(capsys, "mode must be max or min, got mode='xxxx")
    assert len(err) < 300
    assert run_main(["method.theta=" + "9" * 4000, "--cfg"]) == 2
    assert len(one_line_error(capsys, "method.theta must be a finite number > 0")) < 300
    assert run_main(["method.theta=" + "9" * 5000, "--cfg"]) == 2  # past Python's int digits
    assert len(one_line_error(capsys, "cannot read the overrides")) < 300


# --- 8. no library warnings around fedsweep's one-line errors --------------------------------------


class _Payload:
    """Unpickling this would run a shell command (what a planted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_checkpoint_stops_in_one_line_without_library_warnings(tmp_path, capsys):
    import warnings

    import torch

    marker, planted = tmp_path / "pwned", tmp_path / "planted.pt"
    torch.save({"format": 3, "x": _Payload(marker)}, planted, pickle_protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_main([f"checkpoint.resume={planted}", f"log_dir={tmp_path / 'run'}"]) == 2
    one_line_error(capsys, f"checkpoint {planted} holds more than tensors and plain data; refused")
    assert not marker.exists() and not (tmp_path / "run").exists()
    assert [str(w.message) for w in caught] == []


# --- 6. nothing in a sweep folder is followed or trusted --------------------------------------------


@pytest.mark.parametrize("planted", ["results.csv", ".driver.lock", "tensorboard/t0/events", "experiment_state-x.json",
                                     "writable"])  # fmt: skip
def test_a_sweep_folder_with_links_or_files_others_may_write_is_refused(tmp_path, capsys, planted):
    """Checked before Ray starts: nothing is followed, written or unpickled."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\noverrides: [rounds=1]\ngrid:\n  method.theta: [0.5]\n")
    folder, target = tmp_path / "results" / "s", tmp_path / "elsewhere.txt"
    folder.mkdir(parents=True, mode=0o700)
    target.write_text("keep me")
    path = folder / ("experiment_state-x.json" if planted == "writable" else planted)
    path.parent.mkdir(parents=True, exist_ok=True)
    if planted == "writable":  # a Tune state file (it may embed pickles) that others may write
        path.write_text("{}")
        path.chmod(0o666)
    else:
        path.symlink_to(target)
    assert tune_main([str(sweep), "--results", str(tmp_path / "results")]) == 2
    err = one_line_error(capsys, str(path))
    assert ("is not private to you" if planted == "writable" else "is a link") in err
    assert target.read_text() == "keep me" and not (folder / "sweep.yaml").exists()


# --- 7. device=cuda without CUDA ----------------------------------------------------------------------


def test_a_cuda_device_this_machine_lacks_stops_in_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert run_main(["device=cuda", "rounds=1", f"log_dir={tmp_path / 'run'}"]) == 2
    one_line_error(capsys, "device=cuda but torch finds no CUDA device here; use device=cpu or device=auto")
    assert not (tmp_path / "run").exists()
