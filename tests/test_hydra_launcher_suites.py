"""Hydra's shared launcher test suites, run against hydra/launcher=rnnsweep_ray."""

from __future__ import annotations

import os

# Ray reads this when it is imported: it keeps the embedded Ray on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray would post usage statistics off this machine a minute into a session.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402
import ray  # noqa: E402
from hydra import version  # noqa: E402
from hydra.test_utils.launcher_common_tests import (  # noqa: E402
    IntegrationTestSuite,
    LauncherTestSuite,
)

# Registers the launcher's config in Hydra's ConfigStore.
from hydra_plugins.rnnsweep_launcher import rnnsweep_launcher  # noqa: E402, F401

# Every test here runs on a real embedded Ray; the integration suite also starts apps.
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def unspecified_version_base(hydra_restore_singletons):
    """Other tests in this process compose with version_base="1.3", and Hydra keeps that in
    a process-wide singleton (which the launcher ships to its workers, as Hydra's own
    launchers do). These suites expect Hydra's unspecified default, as in a fresh process."""
    version.VersionBase.instance().version_base = version._UNSPECIFIED_


@pytest.fixture(scope="module", autouse=True)
def shared_ray():
    """One embedded Ray for the module: the in-process suite's launches use the live
    connection, and the integration suite's apps connect to it as to a cluster (starting
    Ray afresh in each of their processes would cost seconds a test)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.mark.parametrize("launcher_name, overrides", [("rnnsweep_ray", [])])
class TestRnnsweepRayLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({"defaults": [{"override hydra/launcher": "rnnsweep_ray"}]}, ["-m"])],
)
class TestRnnsweepRayLauncherIntegration(IntegrationTestSuite):
    @pytest.fixture(autouse=True)
    def cluster_address(self, shared_ray, monkeypatch):
        monkeypatch.setenv("RAY_ADDRESS", shared_ray)
