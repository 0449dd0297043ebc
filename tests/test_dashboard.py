"""``hydra.launcher.dashboard=true`` (issue 22): the address is printed, bound to loopback,
with how to log in to Ray 2.60's token-protected dashboard, and the token itself is
never printed. Checked against the real dashboard of a real sweep."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import start_cli, toy, wait_for

pytestmark = pytest.mark.slow

NOTICE = "rnnsweep: Ray dashboard at "


def _status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_dashboard_address_and_login_are_printed_and_work(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "cli.log"
    # Long enough trials that the dashboard is still up when the test looks at it.
    args = ["-m", *toy("workload=train", "steps=100000", "hardware.num_cpus=1"), "batch=1",
            "hydra.launcher.dashboard=true", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    env = {"HOME": str(home), "RAY_AUTH_MODE": "token"}  # the token Ray makes goes in here
    with log.open("w") as out:
        proc = start_cli(args, tmp_path, extra_env=env, merge_output=True, stdout=out)
    try:
        line = wait_for(lambda: next((x for x in log.read_text().splitlines()
                                      if x.startswith(NOTICE)), None), 180,
                        "the dashboard's address")
        url = line.removeprefix(NOTICE).split()[0]
        assert url.startswith("http://127.0.0.1:"), line
        assert "this machine only" in line
        token_file = home / ".ray" / "auth_token"
        assert f"paste the contents of {token_file}" in line
        token = token_file.read_text().strip()
        # The page asks for the token: the API refuses without it and answers with it.
        api = f"{url}/api/cluster_status"
        assert _status(api) == 401
        assert _status(api, token) == 200
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    time.sleep(0.1)
    assert token not in Path(log).read_text()  # printed nowhere, not even at the end
