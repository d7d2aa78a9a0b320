"""The CI integration people copy, run for real: the README's GitHub Actions job, step by step as
the runner runs it (`bash -e`, `if: !cancelled()` steps after a failure), and the pre-commit hook
of .pre-commit-hooks.yaml under the real pre-commit — both with the real metricpact binary, on a
pull request in a scratch git repository.

Stood in for: `actions/checkout` with `fetch-depth: 0` (a full clone of the scratch origin with the
pull request's head checked out) and the install step (the binary under test is on PATH)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("METRICPACT_BIN", ROOT / "target/release/metricpact"))
CONTRACTS = ROOT / "contracts"

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com",
    "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
}

BROKEN = """format: metricpact/v1
name: billing
version: 1.0.0
workload:
  namespace: payments
  target: billing
"""


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=GIT_ENV).stdout


def readme_job():
    """The job exactly as the README documents it."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(# \.github/workflows/metrics-contract\.yaml\n.*?)```", text, re.S)
    assert block, "README.md has no .github/workflows/metrics-contract.yaml block"
    workflow = yaml.safe_load(block.group(1))
    # PyYAML reads the key `on` as YAML 1.1's boolean true.
    assert workflow.get("on", workflow.get(True)) == "pull_request"
    return workflow["jobs"]["contract"]["steps"]


def pull_request(tmp_path, change):
    """A scratch origin whose main holds the shipped contracts, a pull request branch made by
    `change(work_tree)`, and a clone with the head checked out (what actions/checkout gives)."""
    origin = tmp_path / "origin"
    (origin / "contracts").mkdir(parents=True)
    for name in ("http-server.yaml", "rest-api.yaml", "grpc-service.yaml"):
        shutil.copy(CONTRACTS / name, origin / "contracts" / name)
    git(origin, "init", "-q", "-b", "main")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "contracts")
    git(origin, "checkout", "-qb", "pr")
    change(origin)
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "the pull request")
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(origin), str(work)], check=True, env=GIT_ENV)
    git(work, "checkout", "-q", "pr")
    return work


def run_job(work, tmp_path):
    """Runs each step's script as the runner does; returns [(step name, exit code, stdout)] of the
    steps that ran."""
    ran, failed = [], False
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    env = {**GIT_ENV, "PATH": f"{CLI.parent}{os.pathsep}{os.environ['PATH']}", "GITHUB_BASE_REF": "main",
           "RUNNER_TEMP": str(runner_temp)}
    for step in readme_job():
        if "uses" in step:
            assert step["uses"].startswith("actions/checkout@") and step["with"]["fetch-depth"] == 0
            continue
        if step["run"].startswith("cargo install"):
            continue  # the binary under test is on PATH
        if failed and step.get("if") != "${{ !cancelled() }}":
            continue  # GitHub's default `if: success()`
        # GitHub's default shell for `run` on Linux: bash -e {0}.
        script = runner_temp / "step.sh"
        script.write_text(step["run"])
        result = subprocess.run(["bash", "--noprofile", "--norc", "-e", str(script)], cwd=work, env=env,
                                capture_output=True, text=True, timeout=120)
        ran.append((step.get("name", step["run"]), result.returncode, result.stdout))
        failed |= result.returncode != 0
    return ran


def breaking_change(tree):
    """The request counter renamed (breaking), a new contract with an error, a contract removed."""
    path = tree / "contracts/http-server.yaml"
    path.write_text(path.read_text().replace("name: http_server_requests_total     # must end in _total",
                                             "name: http_requests_total"))
    (tree / "contracts/billing.yaml").write_text(BROKEN)
    (tree / "contracts/grpc-service.yaml").unlink()


def test_the_readme_job_annotates_every_problem_of_a_pull_request(tmp_path):
    work = pull_request(tmp_path, breaking_change)
    ran = run_job(work, tmp_path)
    assert [(name, code) for name, code, _ in ran] == [
        ("check every contract", 1),
        ("breaking changes against the base branch", 1),
    ]
    assert ran[0][2].splitlines() == [
        "::error file=contracts/billing.yaml,line=6,col=11,title=metricpact check::`workload.target` must be a mapping "
        "like `{kind: Deployment, name: billing}`, found the string `billing`",
    ]
    assert ran[1][2].splitlines() == [
        "::error file=contracts/grpc-service.yaml,title=metricpact diff [contract-removed]::contracts/grpc-service.yaml "
        "was removed: its metrics and autoscalers go with it",
        "::error file=contracts/http-server.yaml,title=metricpact diff [metric-renamed]::request counter renamed from "
        "`http_server_requests_total` to `http_requests_total`: queries on `http_server_requests_total` find nothing "
        "(breaks: KEDA trigger qps-per-pod (http_server_requests_total); prometheus-adapter rule "
        "http_server_requests_total -> http_server_requests_per_second; HPA Pods metric http_server_requests_per_second; "
        "recording rule namespace_pod:http_server_requests:rate*)",
    ]


def test_the_readme_job_passes_a_compatible_change_with_a_notice(tmp_path):
    def add_label(tree):
        path = tree / "contracts/http-server.yaml"
        path.write_text(path.read_text().replace(
            "  - name: url_scheme\n", "  - name: tenant\n    from: request.header.x-tenant\n  - name: url_scheme\n"))

    ran = run_job(pull_request(tmp_path, add_label), tmp_path)
    assert ran == [
        ("check every contract", 0, ""),
        ("breaking changes against the base branch", 0,
         "::notice file=contracts/http-server.yaml,title=metricpact diff [label-added]::label `tenant` added: "
         "existing series split, sums are unchanged\n"),
    ]


def hooks():
    return {h["id"]: h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}


def test_both_hooks_run_the_same_check():
    built, system = hooks()["metricpact-check"], hooks()["metricpact-check-system"]
    assert (built["language"], system["language"]) == ("rust", "system")
    for key in ("entry", "files", "name"):
        assert built[key] == system[key], key


def test_the_pre_commit_hook_refuses_a_broken_contract(tmp_path):
    repo = tmp_path / "app"
    (repo / "contracts").mkdir(parents=True)
    shutil.copy(CONTRACTS / "http-server.yaml", repo / "contracts/http-server.yaml")
    (repo / "contracts/billing.yaml").write_text(BROKEN)
    (repo / "values.yaml").write_text("not: a contract\n")  # outside contracts/: not checked
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    env = {**GIT_ENV, "PATH": f"{CLI.parent}{os.pathsep}{os.environ['PATH']}",
           "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}
    pre_commit = [str(Path(os.sys.executable).parent / "pre-commit"), "try-repo", str(ROOT), "metricpact-check-system"]

    result = subprocess.run(pre_commit, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("contracts/billing.yaml:6:11: error: `workload.target` must be a mapping like "
            "`{kind: Deployment, name: billing}`, found the string `billing`") in result.stdout.splitlines()
    assert "values.yaml" not in result.stdout

    (repo / "contracts/billing.yaml").write_text(BROKEN.replace("  target: billing", "  target: {name: billing}"))
    git(repo, "add", "-A")
    result = subprocess.run(pre_commit, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^metricpact check\.+Passed$", result.stdout, re.M), result.stdout
