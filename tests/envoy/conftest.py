"""pytest fixtures for the real-Envoy tests: a controlled upstream and a scratch directory."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402


def pytest_sessionstart(session):
    for artifact in (harness.WASM, harness.CLI, harness.ENVOY):
        if not Path(artifact).exists():
            raise pytest.UsageError(f"{artifact} is missing: run `make build` (make test does it for you)")
    for tool in (harness.PROMETHEUS, harness.PROMTOOL):
        if not tool.is_absolute():
            raise pytest.UsageError(f"{tool} is not on PATH: run `make deps` (tests/setup.sh installs Debian's prometheus)")


def _version(argv) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"unavailable ({e})"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def pytest_report_header(config):
    """The exact tools the run used (their bytes and behaviour are what the tests assert)."""
    return [f"envoy: {_version([str(harness.ENVOY), '--version'])}",
            f"prometheus: {harness.PROMETHEUS}: {_version([str(harness.PROMETHEUS), '--version'])}",
            f"promtool: {harness.PROMTOOL}: {_version([str(harness.PROMTOOL), '--version'])}"]


@pytest.fixture
def upstream():
    with harness.Upstream() as up:
        yield up


@pytest.fixture
def workdir(tmp_path):
    return tmp_path
