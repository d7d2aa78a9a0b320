"""pytest fixtures for the real-Envoy tests: a controlled upstream and a scratch directory."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402


def pytest_sessionstart(session):
    for artifact in (harness.WASM, harness.CLI, harness.ENVOY):
        if not Path(artifact).exists():
            raise pytest.UsageError(f"{artifact} is missing: run `make build` (make test does it for you)")


@pytest.fixture
def upstream():
    with harness.Upstream() as up:
        yield up


@pytest.fixture
def workdir(tmp_path):
    return tmp_path
