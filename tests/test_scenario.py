"""The one scenario model: flags generated from it for every front end, the TOML file, --print-scenario, and the
checks that run before anything starts (loadgen.scenario)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadgen.cli import main
from loadgen.errors import UsageError
from loadgen.scenario.check import build, resolve
from loadgen.scenario.files import load_toml
from loadgen.scenario.flags import fields
from loadgen.scenario.load import public_dict, scenario_from_args, scenario_toml
from loadgen.scenario.model import SECTIONS, Scenario

ROOT = Path(__file__).resolve().parent.parent


def _parser(configure) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    configure(p)
    return p


def _flags_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: a for a in parser._actions for opt in a.option_strings}


def test_every_field_has_one_flag_and_help():
    seen: dict[str, str] = {}
    for section, name, info, meta in fields():
        assert meta["flag"].startswith("--") and info.description, (section, name)
        assert meta["flag"] not in seen, f"{meta['flag']} is declared twice ({seen.get(meta['flag'])})"
        seen[meta["flag"]] = f"{section}.{name}"
    assert len(seen) > 60


def test_run_sweep_and_serve_take_the_same_flags_from_the_model():
    """Same names, defaults and help: the front ends generate them, none writes them by hand."""
    from loadgen.run_cli import configure as run_configure
    from loadgen.serve.cli import configure as serve_configure
    from loadgen.sweep.cli import configure as sweep_configure

    run, sweep, serve = (_flags_of(_parser(c)) for c in (run_configure, sweep_configure, serve_configure))
    for section, _name, _info, meta in fields():
        flag = meta["flag"]
        if flag != "--url":  # a sweep takes several endpoints: --url [LABEL=]URL, repeatable
            assert sweep[flag].help == run[flag].help, flag
        if section == "server":
            assert serve[flag].help == run[flag].help, flag
    assert run["--request-timeout"].default is argparse.SUPPRESS  # defaults are the model's, not the parser's
    defaults = Scenario()
    assert (defaults.limits.request_timeout, defaults.server.max_batch, defaults.power.idle) == (300.0, 64, 5.0)


def test_flags_override_the_file(tmp_path):
    from loadgen.run_cli import configure

    f = tmp_path / "s.toml"
    f.write_text('[load]\nrate = 8\nduration = "30s"\nseed = 3\n[workload]\ninput_tokens = "uniform:16,64"\n')
    args = _parser(configure).parse_args(["--scenario", str(f), "--rate", "2", "--output-tokens", "12",
                                          "--out-dir", str(tmp_path)])
    sc, _ = scenario_from_args(args)
    assert (sc.load.rate, sc.load.duration, sc.load.seed) == (2.0, 30.0, 3)
    assert (sc.workload.input_tokens, sc.workload.output_tokens) == ("uniform:16,64", "12")
    assert sc.target.model == "ensemble"  # resolved: the Triton default


def test_print_scenario_round_trips(tmp_path):
    from loadgen.run_cli import configure

    argv = ["--rate", "5", "--duration", "20s", "--input-tokens", "normal:128,16", "--slo", "ttft=500ms",
            "--fail-on", "ttft_p99<1s", "--server-max-batch", "16", "--header", "X-Team: a", "--api-key", "sk-1",
            "--warmup", "3s", "--on-late", "drop", "--out-dir", str(tmp_path)]
    sc, _ = scenario_from_args(_parser(configure).parse_args(argv))
    text = scenario_toml(sc)
    assert "sk-1" not in text and "X-Team: a" in text
    f = tmp_path / "s.toml"
    f.write_text(text)
    again, _ = scenario_from_args(_parser(configure).parse_args(["--scenario", str(f)]))
    assert public_dict(again) == public_dict(sc)


@pytest.mark.parametrize("argv, needle", [
    (["--rate", "fast", "--duration", "5"], "--rate 'fast'"),
    (["--rate", "-3", "--duration", "5"], "--rate -3: must be a positive"),
    (["--rate", "5"], "give --duration"),
    (["--duration", "5"], "give --rate R"),
    (["--rate", "5", "--duration", "soon"], "--duration 'soon'"),
    (["--rate", "5", "--duration", "5", "--input-tokens", "foo"], "--input-tokens"),
    (["--rate", "5", "--duration", "5", "--slo", "ttft=fast"], "--slo"),
    (["--rate", "5", "--duration", "5", "--fail-on", "ttft_p99<1parsec"], "--fail-on"),
    (["--rate", "5", "--duration", "5", "--fail-on", "bogus<1"], "unknown metric 'bogus'"),
    (["--rate", "5", "--duration", "5", "--fail-on", "goodput_rps>1"], "goodput needs --slo"),
    (["--rate", "5", "--duration", "5", "--on-late", "later"], "--on-late 'later'"),
    (["--rate", "5", "--duration", "5", "--request-timeout", "0"], "--request-timeout 0"),
    (["--rate", "5", "--duration", "5", "--backend", "grpc"], "--backend 'grpc'"),
    (["--rate", "5", "--duration", "5", "--server-max-batch", "100000"], "100000"),
    (["--rate", "5", "--duration", "5", "--power", "watts"], "--power 'watts'"),
    (["--rate", "5", "--duration", "5", "--speedup", "2"], "--speedup applies to trace replay"),
    (["--rate", "5", "--duration", "5", "--tokenizer", "/no/such/tokenizer.json"], "--tokenizer"),
    (["--rate", "5", "--duration", "5", "--out-dir", "/proc/nope"], "--out-dir /proc/nope"),
    (["--rate", "5", "--duration", "5", "--out-dir", "/etc/hostname"], "is a file"),
])
def test_bad_values_are_one_line_naming_the_flag(argv, needle):
    from loadgen.run_cli import configure

    with pytest.raises(UsageError) as err:
        scenario_from_args(_parser(configure).parse_args(argv))
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_file_with_an_unknown_key_names_the_file_and_key(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("[load]\nrate = 5\nduraton = 10\n")
    with pytest.raises(UsageError, match=r"s\.toml: unknown key 'load\.duraton'"):
        scenario_from_args(argparse.Namespace(scenario=str(f)))
    f.write_text("[load\nrate = 5\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_toml(f)


def test_an_unwritable_out_dir_is_refused_and_a_checked_one_left_as_it_was(tmp_path):
    sc = build({"load": {"rate": 1, "duration": 1}, "results": {"out_dir": str(tmp_path / "a" / "b")}})
    resolve(sc)
    assert not (tmp_path / "a").exists()  # the check made and removed it: a failed run leaves nothing behind
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere but on read-only file systems
            with pytest.raises(UsageError, match="cannot write there"):
                resolve(build({"load": {"rate": 1, "duration": 1}, "results": {"out_dir": str(ro)}}))
    finally:
        ro.chmod(0o700)


def test_bad_input_exits_2_fast_and_starts_nothing(tmp_path):
    """``loadgen run --input-tokens foo`` (no --url) says so in one line, well under a second, before the
    embedded server would start."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "loadgen", "run", "--input-tokens", "foo", "--rate", "2",
                           "--duration", "5", "--out-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    elapsed = time.perf_counter() - t
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--input-tokens" in proc.stderr
    assert "starting the embedded" not in proc.stdout and not list(tmp_path.iterdir())
    # the margin holds on a busy machine: the interpreter itself starts in about 0.1 s
    assert elapsed < 5, elapsed


def test_sections_cover_what_the_issue_names():
    assert set(SECTIONS) == {"target", "load", "workload", "trace", "session", "limits", "results", "power",
                             "server"}


def test_locust_gets_the_same_flags_without_groups():
    """In a subprocess: importing locust monkey-patches the whole process for gevent."""
    code = """
from locust.argument_parser import LocustArgumentParser
from loadgen.scenario.flags import add_flags, overlay_from_args
p = LocustArgumentParser()
add_flags(p, locust=True, skip={"--url"})
actions = {o: a for a in p._actions for o in a.option_strings}
assert "--rate" in actions and "--url" not in actions
assert actions["--rate"].include_in_web_ui and not actions["--workers"].include_in_web_ui
args = p.parse_args(["--rate", "4", "--input-tokens", " "])
assert overlay_from_args(args) == {"load": {"rate": "4"}}, overlay_from_args(args)  # empty box: not given
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.integration
def test_one_file_runs_unchanged_in_run_and_sweep(tmp_path, capsys):
    """``loadgen run ... --print-scenario > s.toml``, then ``loadgen run --scenario s.toml`` and
    ``loadgen sweep --scenario s.toml`` against the embedded server: the same resolved scenario in config.json."""
    base = ["run", "--rate", "4", "--requests", "12", "--input-tokens", "16", "--output-tokens", "8",
            "--server-model", "opt-125m", "--server-max-batch", "8", "--seed", "4", "--no-live",
            "--slo", "ttft=2s", "--warmup", "2", "--out-dir", str(tmp_path / "runs")]
    assert main([*base, "--print-scenario"]) == 0
    f = tmp_path / "s.toml"
    f.write_text(capsys.readouterr().out)
    assert main(["run", "--scenario", str(f)]) == 0
    assert main(["sweep", "--scenario", str(f), "--out", str(tmp_path / "sw"), "--no-plots"]) == 0
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    point_dir = next((tmp_path / "sw" / "points").iterdir())
    a = json.loads((run_dir / "config.json").read_text())["scenario"]
    b = json.loads((point_dir / "config.json").read_text())["scenario"]
    front_end_fields = {("results", "name"), ("results", "out_dir"), ("results", "live")}
    shared = [(s, k) for s in a for k in a[s] if (s, k) not in front_end_fields]
    assert len(shared) >= 15
    assert [(s, k, a[s][k]) for s, k in shared] == [(s, k, b[s][k]) for s, k in shared]
    summary = json.loads((point_dir / "summary.json").read_text())
    assert summary["completed_requests"] == 10 and summary["slo_s"] == {"ttft": 2.0}  # warm-up and SLO kept
