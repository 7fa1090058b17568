"""The state directory and the pids in it: private dirs, validated state, checked pids.

A crafted state root or state.json must not make `virtwire down` remove
another directory or signal a process that is not the service it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtwire.errors import ConfigError, NotFoundError, PermissionDeniedError
from virtwire.orchestrator import pids
from virtwire.orchestrator.core import Orchestrator, lan_dir, read_state, remove_lan_dir
from virtwire.orchestrator.runtime.process import ProcessRuntime, _exit_status
from virtwire.orchestrator.statedir import private_dir
from virtwire.topology import parse_topology

from support.procs import VIRTWIRE

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def _mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "VIRTWIRE_STATE_DIR": str(root)})


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process leading its own process group."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _state(name: str, services: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": "lan.yaml", "orchestrator": "127.0.0.1:1",
            "orchestrator_pid": 0, "services": services, **extra}


def _write(root: Path, lan: str, data: Any) -> Path:
    path = private_dir(root, lan)
    assert path is not None
    (path / "state.json").write_text(json.dumps(data))
    return path


# -- the directories ------------------------------------------------------------------
def test_the_root_and_lan_dirs_are_made_0700(tmp_path: Path) -> None:
    root = tmp_path / "a" / "state"
    got = private_dir(root, "lan", "sub")
    assert got == root / "lan" / "sub"
    for path in (root, root / "lan", root / "lan" / "sub"):
        assert _mode(path) == 0o700, path


def test_a_0755_root_of_ours_is_tightened_to_0700(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir()
    root.chmod(0o755)
    (root / "lan").mkdir(mode=0o755)
    os.chmod(root / "lan", 0o755)
    assert private_dir(root, "lan") == root / "lan"
    assert _mode(root) == 0o700 and _mode(root / "lan") == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_a_root_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    root = tmp_path / "state"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(PermissionDeniedError, match="writable by group or others"):
        private_dir(root)
    assert _mode(root) == mode  # refused, not used or changed


def test_a_symlinked_root_or_lan_dir_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(target)
    with pytest.raises(PermissionDeniedError, match="is a symlink"):
        private_dir(link, "lan")
    assert not (target / "lan").exists()
    root = tmp_path / "root"
    private_dir(root)
    (root / "lan").symlink_to(target)
    with pytest.raises(PermissionDeniedError, match="is a symlink"):
        private_dir(root, "lan")
    (root / "file").write_text("")
    with pytest.raises(PermissionDeniedError, match="not a directory"):
        private_dir(root, "file")


@needs_root
def test_a_root_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    os.chown(root, NOBODY, NOBODY)
    with pytest.raises(PermissionDeniedError, match=f"owned by uid {NOBODY}"):
        private_dir(root)
    with pytest.raises(PermissionDeniedError, match=f"owned by uid {NOBODY}"):
        read_state("lan", root)
    # A LAN dir below a good root, owned by someone else: refused too.
    good = tmp_path / "good"
    private_dir(good)
    (good / "lan").mkdir(mode=0o700)
    os.chown(good / "lan", NOBODY, NOBODY)
    with pytest.raises(PermissionDeniedError, match=f"owned by uid {NOBODY}"):
        private_dir(good, "lan")


@needs_root
def test_the_cli_refuses_a_foreign_root_before_starting_anything(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    os.chown(root, NOBODY, NOBODY)
    lan = tmp_path / "lan.yaml"
    lan.write_text("name: lab\nnodes:\n  hub0: {kind: hub}\n")
    out = _cli(root, "up", str(lan), "--detach")
    assert out.returncode == 1 and f"owned by uid {NOBODY}" in out.stderr, out.stderr
    assert list(root.iterdir()) == []
    out = _cli(root, "status")
    assert out.returncode == 1 and f"owned by uid {NOBODY}" in out.stderr, out.stderr


def test_the_cli_refuses_a_symlinked_root(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    _write(target, "lab", _state("lab", []))
    link = tmp_path / "state"
    link.symlink_to(target)
    out = _cli(link, "down", "lab")
    assert out.returncode == 1 and "is a symlink" in out.stderr, out.stderr
    assert (target / "lab" / "state.json").exists()


async def test_orchestrator_up_refuses_a_symlinked_root(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(target)
    orch = Orchestrator(state_dir=link)
    topo = parse_topology("name: lab\nnodes:\n  hub0: {kind: hub}\n")
    with pytest.raises(PermissionDeniedError, match="is a symlink"):
        async for _event in orch.up(topo):
            pass
    assert list(target.iterdir()) == [] and orch.services == {}


# -- the state file ------------------------------------------------------------------
@pytest.mark.parametrize(("data", "message"), [
    (_state("../victim", []), "bad LAN name"),
    (_state("other", []), "names LAN 'other', not 'lab'"),
    (_state("lab", [{"name": "../../etc", "kind": "hub", "node": "hub0"}]),
     "is not a service name of node"),
    (_state("lab", [{"name": "x", "kind": "hub", "node": "../x"}]), "bad node name"),
    (_state("lab", [{"name": "hub0", "kind": "hub", "node": "hub0", "pid": -1}]),
     "negative pid"),
    (_state("lab", [{"name": "hub0", "kind": "hub", "node": "hub0", "pid": "lots"}]),
     "services.0.pid"),
    (_state("lab", [{"kind": "hub"}]), "services.0.name"),
    ({**_state("lab", []), "services": "none"}, "services"),
    ({"name": "lab"}, "problems"),
    ([1, 2], "the top level"),
    (_state("lab", [], orchestrator_pid=-5), "negative orchestrator pid"),
    ({**_state("lab", []), "name": "x" * 100_000}, "bad LAN name"),
])
def test_a_crafted_state_file_is_a_clear_error(tmp_path: Path, data: Any, message: str) -> None:
    path = _write(tmp_path, "lab", data) / "state.json"
    with pytest.raises(ConfigError) as info:
        read_state("lab", tmp_path)
    text = str(info.value)
    assert f"bad state file {path}" in text and message in text, text
    assert len(text) < 600  # no unbounded echo of what the file holds


def test_state_that_is_not_json_or_is_a_symlink(tmp_path: Path) -> None:
    lan = _write(tmp_path, "lab", {})
    (lan / "state.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        read_state("lab", tmp_path)
    (lan / "state.json").unlink()
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_state("lab", [])))
    (lan / "state.json").symlink_to(other)
    with pytest.raises(ConfigError, match="cannot open it"):
        read_state("lab", tmp_path)


def test_good_state_reads_back_and_unknown_fields_are_ignored(tmp_path: Path) -> None:
    svc = {"name": "vm1-guestmem", "kind": "guestmem", "node": "vm1", "pid": 7,
           "start_time": 99, "future_field": 1}
    _write(tmp_path, "lab", _state("lab", [svc], boot_id="b", future=True))
    state = read_state(None, tmp_path)
    assert state.name == "lab" and state.boot_id == "b"
    assert state.services[0].start_time == 99 and state.services[0].pid == 7
    with pytest.raises(NotFoundError):
        read_state("nolan", tmp_path)
    with pytest.raises(NotFoundError):
        read_state(None, tmp_path / "missing")


def test_lan_names_are_checked_before_any_path_is_made(tmp_path: Path) -> None:
    for bad in ("../x", "a/b", ".", "..", "", "UPPER", "x" * 200):
        with pytest.raises(ConfigError, match="bad LAN name"):
            lan_dir(bad, tmp_path)
        with pytest.raises(ConfigError, match="bad LAN name"):
            read_state(bad, tmp_path)
        with pytest.raises(ConfigError, match="bad LAN name"):
            remove_lan_dir(bad, tmp_path)


# -- virtwire down with crafted state -----------------------------------------------
def test_down_with_a_crafted_name_removes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "state"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    _write(root, "lab", _state("../victim", []))
    out = _cli(root, "down", "lab")
    assert out.returncode == 2 and "bad state file" in out.stderr, out.stderr
    out = _cli(root, "down", "../victim")
    assert out.returncode == 2 and "bad LAN name" in out.stderr, out.stderr
    assert (victim / "precious").read_text() == "keep me"
    assert (root / "lab" / "state.json").exists()


def _service(pid: int, start: int) -> dict[str, Any]:
    return {"name": "hub0", "kind": "hub", "node": "hub0", "pid": pid, "start_time": start}


@pytest.mark.parametrize("case", ["no start time", "another start time", "another boot"])
def test_down_does_not_signal_a_pid_that_is_not_the_service(
        tmp_path: Path, sleeper: subprocess.Popen[bytes], case: str) -> None:
    root = tmp_path / "state"
    start = pids.start_time(sleeper.pid)
    assert start > 0
    recorded, boot = {"no start time": (0, pids.boot_id()),
                      "another start time": (start + 1, pids.boot_id()),
                      "another boot": (start, "not-this-boot")}[case]
    _write(root, "lab", _state("lab", [_service(sleeper.pid, recorded)],
                               orchestrator_pid=sleeper.pid,
                               orchestrator_start_time=recorded, boot_id=boot))
    _write(root, "other", _state("other", []))
    out = _cli(root, "down", "lab")
    assert out.returncode == 0, out.stderr
    assert "not signalled" in out.stderr
    assert sleeper.poll() is None, "an unrelated process was signalled"
    assert not (root / "lab").exists()  # the LAN's own dir goes
    assert (root / "other" / "state.json").exists()  # and nothing else


def test_down_kills_the_group_of_a_service_that_is_still_the_one_started(
        tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """The control: with the recorded start time and boot, the group is killed."""
    root = tmp_path / "state"
    _write(root, "lab", _state("lab", [_service(sleeper.pid, pids.start_time(sleeper.pid))],
                               boot_id=pids.boot_id()))
    out = _cli(root, "down", "lab")
    assert out.returncode == 0, out.stderr
    assert sleeper.wait(10) == -signal.SIGKILL


# -- pids -----------------------------------------------------------------------------
def test_signal_process_checks_the_start_time(sleeper: subprocess.Popen[bytes]) -> None:
    start = pids.start_time(sleeper.pid)
    assert pids.running(sleeper.pid, start) and pids.same_process(sleeper.pid, start)
    assert not pids.same_process(sleeper.pid, 0)
    assert not pids.same_process(sleeper.pid, start, boot="another-boot")
    for group in (False, True):
        assert not pids.signal_process(sleeper.pid, start + 1, signal.SIGKILL, group=group)
        assert not pids.signal_process(sleeper.pid, 0, signal.SIGKILL, group=group)
    assert sleeper.poll() is None
    assert pids.signal_process(sleeper.pid, start, signal.SIGTERM, boot=pids.boot_id())
    assert sleeper.wait(10) == -signal.SIGTERM
    assert pids.start_time(sleeper.pid) == 0
    assert not pids.signal_process(sleeper.pid, start, signal.SIGKILL)


def test_signal_process_group_reaches_the_whole_group() -> None:
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE,
                              start_new_session=True, text=True)
    try:
        assert leader.stdout is not None
        child = int(leader.stdout.readline())
        assert pids.signal_process(leader.pid, pids.start_time(leader.pid), signal.SIGKILL,
                                   group=True)
        assert leader.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while pids.running(child, pids.start_time(child)):
            assert time.monotonic() < deadline, "the group's other process survived"
            time.sleep(0.02)
    finally:
        leader.kill()
        leader.wait()


def test_a_backend_child_is_not_reaped_until_it_is_stopped() -> None:
    """ProcessRuntime's exited/stop: the zombie keeps the pid (and group number)."""
    proc = subprocess.Popen(["sh", "-c", "exit 3"], process_group=0)
    deadline = time.monotonic() + 10
    while _exit_status(proc) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert _exit_status(proc) == 3
    assert proc.returncode is None and Path(f"/proc/{proc.pid}").exists()
    assert not pids.running(proc.pid, pids.start_time(proc.pid))  # a zombie is not running
    assert proc.wait() == 3


async def test_process_backend_workdirs_are_private_from_the_root(tmp_path: Path) -> None:
    """The agent's layout (ROOT/agent/LAN): every level 0700, a bad root refused."""
    root = tmp_path / "state"
    await ProcessRuntime(root / "agent" / "lab", root=root).open()
    for path in (root, root / "agent", root / "agent" / "lab"):
        assert _mode(path) == 0o700, path
    await ProcessRuntime(root / "lab2").open()  # default root: the workdir's parent
    assert _mode(root / "lab2") == 0o700
    link = tmp_path / "link"
    link.symlink_to(root)
    with pytest.raises(PermissionDeniedError, match="is a symlink"):
        await ProcessRuntime(link / "agent" / "lab3", root=link).open()
    assert not (root / "agent" / "lab3").exists()
