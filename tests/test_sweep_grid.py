"""The sweep spec: TOML scenarios and flags into one validated grid (loadgen.sweep.grid, loadgen.sweep.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadgen.errors import UsageError
from loadgen.scenario.files import load_toml
from loadgen.scenario.flags import merge
from loadgen.sweep.cli import configure, overlay_from_args
from loadgen.sweep.grid import spec_from_mapping, spec_from_saved
from loadgen.sweep.runner import saturation_reason

ROOT = Path(__file__).resolve().parent.parent


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    configure(p)
    return p.parse_args(list(argv))


def test_embedded_grid_is_the_cross_product_with_readable_labels():
    spec = spec_from_mapping({"server": {"max_batch": [8, 32], "replicas": [1, 2], "speed": 0.2},
                              "sweep": {"concurrencies": [4, 1]}, "load": {"requests": 20}})
    assert [t.label for t in spec.targets] == ["1x8", "2x8", "1x32", "2x32"]
    pts = spec.points()
    assert len(pts) == 8
    assert [p.load.label for p in pts[:2]] == ["c1", "c4"]  # each series in increasing load
    assert pts[0].id == f"{pts[0].target.slug}--c1"
    assert all(p.load.requests == 20 for p in pts)


def test_explicit_configs_with_their_own_loads_and_speeds():
    spec = spec_from_mapping({
        "workload": {"lengths": "sharegpt"},
        "server": {"model": "opt-1.3b"},
        "sweep": {"configs": [
            {"max_batch": 1, "speed": 3.0, "offline": 32},
            {"max_batch": 256, "replicas": 2, "speed": 0.4, "offline": [600]},
        ]}})
    a, b = spec.targets
    assert (a.label, a.speed, a.loads[0].label) == ("1x1", 3.0, "offline-32")
    assert (b.label, b.replicas, b.loads[0].value) == ("2x256", 2, 600)
    assert not spec.loads  # no sweep-wide load needed when every configuration has its own


def test_speed_enters_the_label_only_when_it_alone_tells_configs_apart():
    spec = spec_from_mapping({"server": {"max_batch": 8, "speed": [0.2, 0.5]}, "sweep": {"offline": 10}})
    assert [t.label for t in spec.targets] == ["1x8 s0.2", "1x8 s0.5"]


def test_external_endpoints_and_restart_command():
    spec = spec_from_mapping({"sweep": {"kind": "external", "rates": [1, 2], "endpoints": [
        {"label": "triton", "url": "http://127.0.0.1:8000"},
        {"label": "vllm", "url": "http://127.0.0.1:9000", "backend": "openai-completions", "model": "opt"}]},
        "load": {"duration": "10s"}})
    assert [(t.kind, t.backend, t.model) for t in spec.targets] == [
        ("external", "triton-http", "ensemble"), ("external", "openai-completions", "opt")]
    cmd = spec_from_mapping({"sweep": {"kind": "command", "command": "restart.sh {max_batch} {replicas}",
                                       "offline": 100},
                             "target": {"url": "http://127.0.0.1:8000"}, "server": {"max_batch": [32, 64]}})
    assert [t.command.format(**t.params()) for t in cmd.targets] == ["restart.sh 32 1", "restart.sh 64 1"]


@pytest.mark.parametrize("mapping, words", [
    ({"server": {"max_batch": 8}, "sweep": {"offline": 10}, "sweeep": {}}, "unknown key 'sweeep'"),
    ({"server": {"max_batch": 8, "maxbatch": 2}, "sweep": {"offline": 10}}, "unknown key 'server.maxbatch'"),
    ({"server": {"max_batch": 8}}, "no load levels"),
    ({"server": {"max_batch": 8}, "sweep": {"rates": [1]}}, "need requests or duration"),
    ({"server": {"max_batch": [0, 8]}, "sweep": {"offline": 10}}, "must be > 0"),
    ({"server": {"max_batch": 100000}, "sweep": {"offline": 10}}, "configuration 1x100000"),
    ({"server": {"model": "gpt-9"}, "sweep": {"offline": 10}}, "gpt-9"),
    ({"target": {"backend": "http"}, "sweep": {"offline": 10}}, "backend 'http'"),
    ({"sweep": {"kind": "cloud", "offline": 10}}, "choose one of"),
    ({"sweep": {"kind": "external", "offline": 10}}, "needs endpoints"),
    ({"sweep": {"kind": "external", "offline": 10, "endpoints": [{"url": "http://x:1", "backend": "openai-chat"}]}},
     "model is required"),
    ({"sweep": {"kind": "command", "offline": 10}, "target": {"url": "http://x:1"}}, "needs command"),
    ({"sweep": {"offline": 10}, "analysis": {"latency_metric": "p99"}}, "latency metric"),
    ({"sweep": {"offline": 10}, "stop": {"latency": "e2e_p99<30"}}, "with a unit"),
    ({"sweep": {"offline": 10}, "workload": {"lengths": "azure"}}, "lengths"),
    ({"sweep": {"offline": 10}, "workload": {"input_tokens": "zipf:2"}}, "unknown size form"),
])
def test_bad_specs_are_one_clear_line(mapping, words):
    with pytest.raises(UsageError) as err:
        spec_from_mapping(mapping, "scenario.toml")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_flags_override_the_scenario_file():
    base = load_toml(ROOT / "scenarios" / "study" / "batch_advice.toml")
    args = _args("--name", "mine", "--seed", "5", "--no-early-stop", "--advise-slo", "tpot_mean<30ms")
    spec = spec_from_mapping(merge(base, overlay_from_args(args)))
    assert spec.name == base["sweep"]["name"] and spec.base.results.name == "mine"
    assert not spec.stop.enabled and spec.analysis.slo == "tpot_mean<30ms"
    assert spec.workload["seed"] == 5 and spec.workload["lengths"] == base["workload"]["lengths"]
    assert len(spec.targets) == len(base["sweep"]["configs"])


def test_cli_flags_alone_make_a_sweep():
    args = _args("--server-max-batch", "8,32", "--rates", "2,4", "--requests", "50", "--stop-latency", "e2e_p99<2s",
                 "--url", "a=http://127.0.0.1:1", "--url", "http://127.0.0.1:2", "--backend", "triton-http")
    spec = spec_from_mapping(merge({}, overlay_from_args(args)))
    assert [t.label for t in spec.targets] == ["a", "http://127.0.0.1:2"]
    assert [p.load.label for p in spec.points()][:2] == ["rate-2", "rate-4"]
    with pytest.raises(UsageError, match="exactly one --url"):
        overlay_from_args(_args("--restart-command", "x", "--offline", "5"))


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "scenarios" / "study").glob("*.toml")))
def test_shipped_study_scenarios_parse_and_round_trip(name):
    spec = spec_from_mapping(load_toml(ROOT / "scenarios" / "study" / name), name)
    assert spec.points() and spec.name
    again = spec_from_saved(spec.to_dict(), name)
    assert [p.id for p in again.points()] == [p.id for p in spec.points()]
    assert [p.definition(again.workload) for p in again.points()] == [p.definition(spec.workload)
                                                                      for p in spec.points()]


def test_saturation_rules():
    spec = spec_from_mapping({"sweep": {"rates": [1, 2], "concurrencies": [1, 2]}, "load": {"requests": 5},
                              "stop": {"latency": "e2e_p99<1s", "min_gain": 0.1}})
    rate_pt, _, conc_pt, _ = spec.points()
    ok = {"achieved_ratio": 1.0, "served_ratio": 0.97, "e2e_p99": 800.0, "throughput": 100.0}
    assert saturation_reason(spec, rate_pt, ok, None) is None
    assert "scheduled requests on time" in saturation_reason(spec, rate_pt, {**ok, "achieved_ratio": 0.8}, None)
    assert "completed" in saturation_reason(spec, rate_pt, {**ok, "served_ratio": 0.5}, None)
    assert "e2e_p99<1s" in saturation_reason(spec, rate_pt, {**ok, "e2e_p99": 1200.0}, None)
    assert saturation_reason(spec, conc_pt, ok, {"throughput": 80.0}) is None
    assert "grew" in saturation_reason(spec, conc_pt, ok, {"throughput": 95.0})
    off = spec_from_mapping({"sweep": {"rates": [1]}, "load": {"requests": 5}, "stop": {"enabled": False}})
    assert saturation_reason(off, off.points()[0], {**ok, "served_ratio": 0.1}, None) is None
