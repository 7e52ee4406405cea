"""One scenario file, two front ends: a file written by ``loadgen run ... --print-scenario`` runs unchanged through
``locust -f scenarios/ --headless --scenario FILE`` (no class named: the class matching the file is used), and the
Locust run's ``config.json`` holds the same ``scenario`` object as ``loadgen run --scenario FILE`` resolves. Also:
``--print-scenario`` through Locust, a closed-loop file's users, and a bad value refused before anything starts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from loadgen.scenario.files import load_toml
from loadgen.scenario.load import public_dict, scenario_from, scenario_from_args

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# the embedded server the Locust run starts for itself: as light as the test suite's own (conftest.FAST_SERVER)
SERVER = ["--server-model", "opt-125m", "--server-replicas", "2", "--server-max-batch", "32", "--server-speed", "0.2"]
OPEN_LEVEL = ["--backend", "triton-http", "--rate", "4", "--requests", "12", "--input-tokens", "16",
              "--output-tokens", "8", *SERVER]


def print_scenario(path: Path, flags: list[str]) -> Path:
    """The file ``loadgen run FLAGS --print-scenario`` prints."""
    p = subprocess.run([str(BIN / "loadgen"), "run", *flags, "--print-scenario"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    path.write_text(p.stdout)
    return path


def as_loadgen_run_resolves(path: Path) -> dict:
    """``config.json``'s ``scenario`` for ``loadgen run --scenario FILE`` (its own resolution code path)."""
    return public_dict(scenario_from_args(argparse.Namespace(scenario=str(path)))[0])


def locust(args: list[str], out: Path) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(BIN / "locust"), "-f", "scenarios/", "--headless", "--only-summary", *args],
                            cwd=REPO, stdout=open(out / "stdout", "w"), stderr=open(out / "stderr", "w"),
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def explain(out: Path, code: int) -> str:
    return (f"exit {code}\n--- stdout\n{(out / 'stdout').read_text()[-3000:]}\n--- stderr\n"
            f"{(out / 'stderr').read_text()[-3000:]}")


def only_run_dir(runs: Path) -> Path:
    dirs = [p for p in runs.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.fixture(scope="module")
def levels(embedded_server, tmp_path_factory) -> dict[str, tuple[Path, int, Path]]:
    """Both levels side by side (each a few seconds): the open loop on its own embedded server, the closed loop
    against the session's server (its URL in the file)."""
    base = tmp_path_factory.mktemp("scenario_file")
    open_file = print_scenario(base / "open.toml", [*OPEN_LEVEL, "--out-dir", str(base / "open" / "runs")])
    closed_file = print_scenario(base / "closed.toml", [
        "--url", embedded_server.http_url, "--concurrency", "2", "--requests", "6", "--input-tokens", "16",
        "--output-tokens", "4", "--out-dir", str(base / "closed" / "runs")])
    procs = {"open": (open_file, locust(["--scenario", str(open_file)], base / "open")),
             "closed": (closed_file, locust(["--scenario", str(closed_file)], base / "closed"))}
    return {name: (file, p.wait(timeout=180), base / name) for name, (file, p) in procs.items()}


def test_a_printed_file_runs_through_locust_with_the_same_scenario(levels) -> None:
    file, code, out = levels["open"]
    assert code == 0, explain(out, code)
    run_dir = only_run_dir(out / "runs")
    config = orjson.loads((run_dir / "config.json").read_bytes())
    assert config["front_end"] == "locust" and config["embedded_server"] is not None
    assert config["scenario"] == as_loadgen_run_resolves(file)  # out_dir and name included: both from the file
    assert config["level_context"]["extra"]["locust"]["user_class"] == "TritonHttpPoisson"  # picked from the file
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["completed_requests"] == 12 and summary["target_rate_rps"] == 4.0
    assert "starting the embedded Triton server (opt-125m" in (out / "stderr").read_text()


def test_a_closed_loop_file_spawns_its_concurrency_as_users(levels) -> None:
    file, code, out = levels["closed"]
    assert code == 0, explain(out, code)
    run_dir = only_run_dir(out / "runs")
    config = orjson.loads((run_dir / "config.json").read_bytes())
    assert config["scenario"] == as_loadgen_run_resolves(file)
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["mode"] == "closed_loop" and summary["concurrency"] == 2 and summary["completed_requests"] == 6
    assert '"TritonHttpUsers": 2} (2 total users)' in (out / "stderr").read_text()


def test_print_scenario_through_locust_is_the_files_resolved_scenario(tmp_path: Path) -> None:
    file = print_scenario(tmp_path / "s.toml", [*OPEN_LEVEL, "--out-dir", str(tmp_path / "runs")])
    p = subprocess.run([str(BIN / "locust"), "-f", "scenarios/", "--headless", "--scenario", str(file),
                        "--print-scenario"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    (tmp_path / "printed.toml").write_text(p.stdout)
    printed = load_toml(tmp_path / "printed.toml")  # TOML that parses (and nothing else on stdout)
    resolved = scenario_from_args(argparse.Namespace(scenario=str(file)))[0]
    assert scenario_from(printed, {}, "printed") == resolved
    assert printed == load_toml(file)  # the input file is loadgen run's print of the same level
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_a_bad_value_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    file = print_scenario(tmp_path / "s.toml", [*OPEN_LEVEL, "--out-dir", str(tmp_path / "runs")])
    p = subprocess.run([str(BIN / "locust"), "-f", "scenarios/", "--headless", "--scenario", str(file),
                        "--input-tokens", "foo"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    errors = [line for line in p.stderr.splitlines() if "loadgen" in line and "error" in line]
    assert len(errors) == 1 and errors[0].startswith("loadgen: error: --input-tokens") and "'foo'" in errors[0]
    assert "Traceback" not in p.stderr and "embedded" not in p.stderr and not (tmp_path / "runs").exists()
