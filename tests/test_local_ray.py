"""``fedsweep ray start|status|stop``: a local Ray kept between commands, joined by runs, stopped
by pid (every one of its processes, nobody else's); a state file whose Ray has died is ignored."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fedsweep.cli import main
from fedsweep.federation.runtime import local_ray
from fedsweep.federation.runtime.ray_state import running_ray, state_path, write_state
from tests.ray_processes import is_loopback, listening, with_in_command_line

ROOT = Path(__file__).resolve().parents[1]


def others_ray() -> set[int]:
    """Every Ray service of the machine (other people's and other tests' included)."""
    return {pid for pid in with_in_command_line("session_") if Path(f"/proc/{pid}/comm").exists()}


@pytest.mark.slow
def test_a_kept_ray_is_joined_by_a_run_and_stopped_by_pid(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray's token is created in this HOME's ~/.ray
    monkeypatch.setenv("FEDSWEEP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = others_ray()

    assert main(["ray", "start", "--num-cpus", "2"]) == 0
    try:
        state = json.loads(state_path().read_text())
        assert stat.S_IMODE(state_path().stat().st_mode) == 0o600
        assert state["address"].startswith("127.0.0.1:") and state["auth"] == "token"
        assert (tmp_path / ".ray" / "auth_token").is_file()
        ours = local_ray.processes(state["temp_dir"], state["address"])
        assert state["gcs_pid"] in ours and not ours & before
        assert [s for s in listening(ours) if not is_loopback(s[2])] == []
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in ours if _running(pid)]
        assert not [c for c in commands if b"dashboard/dashboard.py" in c]  # no API server without --dashboard
        assert main(["ray", "start"]) == 0 and "already running" in capsys.readouterr().out  # one kept Ray
        assert not with_in_command_line(f"--address={state['address']}") - ours  # every process of it is stopped by pid

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(
            [sys.executable, "-m", "fedsweep.run", "runtime=ray", "rounds=1", f"log_dir={tmp_path / 'run'}"],  # the default pool
            capture_output=True, text=True, timeout=240, env=env, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"the local Ray of `fedsweep ray start` at {state['address']}" in done.stdout
        assert "Ray: 1 of the pool's 1 workers are warm ones of `fedsweep ray start`" in done.stdout
        assert "Started a local Ray instance" not in done.stderr and " -- " not in done.stderr, done.stderr  # joined, no Ray log line
        assert main(["ray", "status"]) == 0
        shown = capsys.readouterr().out
        assert state["address"] in shown and "warm workers: 1" in shown  # --workers auto: a run's pool on 2 CPUs (the driver serves the other share)

        ours |= local_ray.processes(state["temp_dir"], state["address"])
        strangers, kill = [], os.kill

        def recorded(pid, sig):  # every signal stop sends must reach this Ray's processes only
            if pid not in ours and pid not in local_ray.processes(state["temp_dir"], state["address"]):
                strangers.append(pid)
            kill(pid, sig)

        monkeypatch.setattr(local_ray.os, "kill", recorded)
        assert main(["ray", "stop"]) == 0
        assert "stopped the local Ray" in capsys.readouterr().out
        assert not [pid for pid in ours if _running(pid)]
        assert not state_path().exists() and not Path(state["temp_dir"]).exists()
        assert strangers == []  # nobody else's Ray was touched (other tests' Rays come and go meanwhile)
        assert main(["ray", "stop"]) == 0 and "nothing to stop" in capsys.readouterr().out
    finally:  # a failed assertion must not leave the kept Ray running
        if state_path().exists():
            main(["ray", "stop"])


def test_a_stale_state_file_is_ignored_with_a_note_and_removed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEDSWEEP_STATE_DIR", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_state({"address": "127.0.0.1:9", "temp_dir": str(tmp_path / "fedsweep-ray-gone"), "uid": os.getuid(),
                 "gcs_pid": int(dead.stdout), "auth": "token"})  # fmt: skip
    assert running_ray() is None
    assert "no longer running" in capsys.readouterr().err and not state_path().exists()

    state_path().write_text("{cut short")
    assert main(["ray", "status"]) == 1
    out = capsys.readouterr()
    assert "no longer running" in out.err and "no local Ray kept" in out.out and not state_path().exists()


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_bad_warm_worker_count_stops_before_ray_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEDSWEEP_STATE_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        main(["ray", "start", "--workers", "-2"])
    assert stopped.value.code == 2
    assert "argument --workers: give a count >= 0 or auto, not '-2'" in capsys.readouterr().err
    assert not state_path().exists()  # nothing started
