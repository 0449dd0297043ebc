"""Other local users cannot reach into a sweep's embedded Ray: its session directories
(logs, sockets, spilled objects) live in a directory only the sweep's user can enter."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest
from conftest import descendants, start_cli, toy

from rnnsweep.sweep.cluster import LaunchError, private_temp_dir


def _session_dirs(root: int) -> set[str]:
    """The session directories named on the command lines of ``root``'s Ray processes."""
    found = set()
    for pid in descendants(root):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        found |= {a.decode().split("=", 1)[1] for a in args if a.startswith(b"--session-dir=")}
    return found


@pytest.fixture
def short_tmp():
    """A temp dir short enough to hold Ray's socket paths (pytest's own is too long)."""
    path = Path(tempfile.mkdtemp(prefix="rs-"))
    yield path
    shutil.rmtree(path)


@pytest.mark.slow
def test_a_sweeps_ray_sessions_are_in_a_directory_only_its_user_can_enter(tmp_path):
    proc = start_cli(["-m", *toy("batch=1,2", "workload=train", "hardware.num_cpus=1"),
                      f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path)
    sessions: set[str] = set()
    try:
        while proc.poll() is None:  # Ray lives for seconds: its processes are seen
            sessions |= _session_dirs(proc.pid)
            time.sleep(0.1)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    (session,) = sessions
    assert Path(session).is_dir()  # Ray leaves it for its logs
    # Ray makes its own temp dir (the session's parent) 0777 whatever it was; the
    # directory around that one is the user's alone, so no other user reaches the session.
    private = Path(session).parent.parent
    info = os.lstat(private)
    assert stat.S_ISDIR(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o700, oct(info.st_mode)
    assert info.st_uid == os.getuid()
    assert private.parent == Path(os.environ.get("TMPDIR") or "/tmp")


def test_a_temp_dir_others_could_write_into_is_made_again(short_tmp, monkeypatch):
    tmp_path = short_tmp
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    planted = tmp_path / f"rnnsweep-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    (planted / "ray_current_cluster").write_text("127.0.0.1:6379")  # someone else's
    path = Path(private_temp_dir()).parent
    assert path == planted
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert not list(path.iterdir())


@pytest.mark.parametrize("squat", ["link", "file"])
def test_a_temp_dir_that_is_not_the_users_own_directory_is_refused(short_tmp, monkeypatch,
                                                                    squat):
    tmp_path = short_tmp
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    path = tmp_path / f"rnnsweep-{os.getuid()}"
    if squat == "link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.write_text("")
    with pytest.raises(LaunchError, match="not a directory this user owns"):
        private_temp_dir()


def test_a_temp_dir_too_long_for_rays_sockets_falls_back_to_tmp(tmp_path, monkeypatch):
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setenv("RAY_TMPDIR", str(deep))
    path = private_temp_dir()
    assert path == f"/tmp/rnnsweep-{os.getuid()}/ray"
    socket = f"{path}/session_2026-12-06_06-41-28_870013_4194304/sockets/plasma_store.99"
    assert len(socket) <= 107
