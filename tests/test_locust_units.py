"""The Locust front end's pure parts: options, mergeable statistics, the open-loop dispatcher, summaries, report merge.

Nothing here imports ``locust`` itself: importing it monkey-patches the whole process for gevent, which would change
every other test of the session. gevent's own primitives (used by the dispatcher) work without patching.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import gevent
import numpy as np
import orjson
import pytest

from loadgen.core.arrivals import ArrivalSpec, build_offsets, offsets_for_stripe
from loadgen.core.metrics import REQUEST_METRICS_BY_NAME, itl_values_ns
from loadgen.core.prompts import PromptBuilder, RequestSource
from loadgen.core.records import (
    STATUS_CANCELLED,
    STATUS_DROPPED,
    STATUS_ERROR,
    STATUS_OK,
    RequestRecord,
)
from loadgen.core.sizes import parse_size
from loadgen.core.summary import LevelContext, level_records_files
from loadgen.errors import UsageError
from loadgen.locust import report as lreport
from loadgen.locust.args import (
    CLOSED_FOREVER_S,
    LOCUST_SKIP,
    add_arguments,
    class_for_file,
    file_choice,
    level_from_wire,
    level_to_wire,
    options_overlay,
    scenario_from_options,
)
from loadgen.locust.dispatch import OpenLoopDispatcher
from loadgen.locust.stats import LLMStats, MeasureWindow, NodeStats, SparseWindow
from loadgen.report_cli import load_run_dir

REL = 1e-3  # the log histogram keeps percentiles within 0.05 %; bucket centres and interpolation stay under 0.1 %


class Poisson:  # stand-ins for the scenario classes: only their mode and backend matter to the options
    mode, backend = "open", "triton-http"


class Trace:
    mode, backend = "trace", "triton-http"


class Users:
    mode, backend = "closed", "triton-grpc"


class ChatPoisson:
    mode, backend = "open", "openai-chat"


class HttpUsers:
    mode, backend = "closed", "triton-http"


def ui_options(**values: object) -> argparse.Namespace:
    """Options as the web UI form leaves them: strings, empty when not filled in (the scenario's boxes start
    empty: their defaults are the model's), Locust's own and the Locust-only ones with their defaults."""
    base = {"host": "http://127.0.0.1:8000", "backend": "", "model": "", "api_key": "", "arrival": "",
            "rate": "", "cv": "", "duration": "", "requests": "", "seed": "", "input_tokens": "",
            "output_tokens": "", "think_time": "0s", "think_dist": "exponential", "concurrency": "",
            "on_late": "", "late_tolerance": "", "warmup": "", "cooldown": "", "request_timeout": "",
            "drain_timeout": "", "slo": "", "fail_on": "", "perf_metrics": "", "tokenizer": "", "out_dir": "",
            "name": "", "run_name": None, "scenario": None, "run_time": None}
    base.update(values)
    return argparse.Namespace(**base)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The options' default --out-dir (runs/) is checked by creating it: do that in a temporary directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- options ---------------------------------------------------------------------------------------------------
def test_form_strings_become_the_scenario(in_tmp: Path) -> None:
    lv = scenario_from_options(ui_options(rate="8", requests="40", seed="3", input_tokens="uniform:8,16",
                                          slo="ttft=1s", warmup="5", speedup="1"), Poisson)
    sc = lv.scenario
    assert (lv.mode, sc.target.backend, sc.target.model, sc.load.rate, sc.load.requests, sc.load.seed) == (
        "open", "triton-http", "ensemble", 8.0, 40, 3)
    assert sc.workload.input_tokens == "uniform:8,16" and sc.results.slo == "ttft=1s" and sc.warmup_requests == 5
    assert sc.target.url == "http://127.0.0.1:8000"  # Locust's -H/--host is the scenario's --url
    # --backend overrides the class's own; Locust's --run-time bounds an open loop without --duration
    lv = scenario_from_options(ui_options(rate="2", backend="openai-chat", model="m", run_time=30), Poisson)
    assert lv.scenario.target.backend == "openai-chat" and lv.scenario.load.duration == 30.0
    # --run-name is the old spelling of --name; --name wins when both are given
    assert scenario_from_options(ui_options(rate="2", requests="4", run_name="old"), Poisson).scenario.results.name \
        == "old"
    assert scenario_from_options(ui_options(rate="2", requests="4", run_name="old", name="new"),
                                 Poisson).scenario.results.name == "new"


def test_closed_loop_takes_its_concurrency_from_the_users(in_tmp: Path) -> None:
    lv = scenario_from_options(ui_options(host="127.0.0.1:8001", requests="20", think_time="250ms",
                                          think_dist="constant"), Users, users=6)
    sc = lv.scenario
    assert lv.mode == "closed" and lv.users == 6 and sc.load.concurrency == 6 and sc.closed_loop
    assert lv.think_time_s == 0.25 and lv.think_dist == "constant" and sc.target.backend == "triton-grpc"
    # without -u: the scenario's --concurrency, else one user; without --duration/--requests: until Locust stops
    lv = scenario_from_options(ui_options(host="", concurrency="4"), HttpUsers)
    assert lv.users == 4 == lv.scenario.load.concurrency and lv.scenario.load.duration == CLOSED_FOREVER_S
    assert scenario_from_options(ui_options(host="", requests="3"), HttpUsers).users == 1


@pytest.mark.parametrize(("cls", "values", "flag"), [
    (Poisson, {"rate": "abc", "requests": "5"}, "--rate"),
    (Poisson, {"rate": "5", "requests": "2.5"}, "--requests"),
    (Poisson, {"rate": "-1", "requests": "5"}, "--rate"),
    (Poisson, {"rate": "5"}, "--duration"),
    (Poisson, {"requests": "5"}, "--rate"),
    (Poisson, {"rate": "5", "requests": "5", "think_time": "1s"}, "--think-time"),
    (Poisson, {"rate": "5", "requests": "5", "backend": "grpc"}, "--backend"),
    (Poisson, {"rate": "5", "requests": "5", "input_tokens": "foo"}, "--input-tokens"),
    (Users, {"rate": "5", "requests": "5"}, "--rate"),
    (Users, {"host": "127.0.0.1:8001", "requests": "5", "concurrency": "4"}, "--concurrency"),
    (Users, {"requests": "5"}, "--host"),
    (Trace, {"requests": "5"}, "--trace"),
    (Poisson, {"rate": "5", "requests": "5", "trace": "traces/example_bursty.csv"}, "--trace"),
    (Poisson, {"rate": "5", "requests": "5", "slo": "ttft=fast"}, "--slo"),
])
def test_bad_options_name_the_flag(in_tmp: Path, cls: type, values: dict, flag: str) -> None:
    with pytest.raises(UsageError, match=flag):
        scenario_from_options(ui_options(**values), cls, users=1)


def print_scenario(tmp_path: Path, *flags: str) -> Path:
    """A scenario file as ``loadgen run ... --print-scenario`` writes it."""
    from loadgen.scenario.flags import add_flags
    from loadgen.scenario.load import scenario_from_args, scenario_toml

    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args(list(flags))
    args.scenario = None
    path = tmp_path / "s.toml"
    path.write_text(scenario_toml(scenario_from_args(args, check_paths=False)[0]))
    return path


def test_a_scenario_file_resolves_as_in_loadgen_run(in_tmp: Path) -> None:
    from loadgen.scenario.load import public_dict, scenario_from_args

    path = print_scenario(in_tmp, "--backend", "openai-completions", "--url", "http://127.0.0.1:9000", "--model",
                          "m", "--rate", "3", "--requests", "9", "--input-tokens", "16", "--seed", "5")
    expected = public_dict(scenario_from_args(argparse.Namespace(scenario=str(path)))[0])
    # no -H: the file's URL; the file's backend, not the class's
    lv = scenario_from_options(ui_options(host="", scenario=str(path)), ChatPoisson)
    assert public_dict(lv.scenario) == expected and lv.scenario.target.backend == "openai-completions"
    # flags beside the file override it, -H its URL; an empty web-UI box leaves the file's value
    lv = scenario_from_options(ui_options(host="http://127.0.0.1:9001", scenario=str(path), rate="6", seed=""),
                               ChatPoisson)
    sc = lv.scenario
    assert (sc.load.rate, sc.load.requests, sc.load.seed, sc.target.url) == (6.0, 9, 5, "http://127.0.0.1:9001")
    with pytest.raises(UsageError, match=r"^--input-tokens: 'x' is not a number"):
        bad = path.read_text().replace('input_tokens = "16"', 'input_tokens = "x"')
        (in_tmp / "bad.toml").write_text(bad)
        scenario_from_options(ui_options(host="", scenario=str(in_tmp / "bad.toml")), ChatPoisson)


def test_the_class_is_picked_from_the_file(in_tmp: Path) -> None:
    classes = [Poisson, Trace, HttpUsers, Users, ChatPoisson]
    assert class_for_file(classes, "open", "triton-http") is Poisson
    assert class_for_file(classes, "closed", "triton-grpc") is Users
    assert class_for_file(classes, "open", "openai-completions") is ChatPoisson  # the same protocol family
    assert class_for_file(classes, "open", "kserve-infer") is Poisson
    with pytest.raises(UsageError, match="no scenario class selected runs a closed-loop openai-chat level"):
        class_for_file(classes, "closed", "openai-chat")
    path = print_scenario(in_tmp, "--concurrency", "3", "--requests", "6", "--backend", "triton-grpc")
    assert file_choice(ui_options(scenario=str(path))) == ("closed", "triton-grpc")
    assert file_choice(ui_options(scenario=str(path), rate="2")) == ("open", "triton-grpc")
    assert file_choice(ui_options()) is None


def test_workers_get_exactly_the_masters_scenario(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADGEN_API_KEY", "secret-from-env")
    lv = scenario_from_options(ui_options(host="127.0.0.1:8001", requests="20", think_time="1s"), Users, users=3)
    wire = level_to_wire(lv)
    assert "secret-from-env" not in repr(wire)  # the plan goes to the workers, and into no file
    copy = level_from_wire(wire, ui_options(api_key=""))
    assert copy.scenario == lv.scenario and copy.public_dict() == lv.public_dict()


def test_what_locust_does_not_do_is_refused(in_tmp: Path) -> None:
    for flags, flag in ((("--workers", "2"), "--workers 2: .*--processes 2"), (("--power", "nvml"), "--power nvml")):
        path = print_scenario(in_tmp, "--rate", "2", "--requests", "4", *flags)
        with pytest.raises(UsageError, match=flag):
            scenario_from_options(ui_options(scenario=str(path)), Poisson)


def test_the_flags_come_from_the_scenario_model() -> None:
    """Every scenario flag but those Locust has (or means the same as its own) is in Locust's parser, named in the
    web form as on the command line; the web UI shows the fields the model marks for it."""
    import configargparse

    from loadgen.scenario.flags import fields

    class LocustLikeParser(configargparse.ArgumentParser):  # Locust's own parser, without importing locust
        def add_argument(self, *args: object, **kwargs: object) -> object:
            ui = kwargs.pop("include_in_web_ui", True)
            kwargs.pop("is_secret", None)
            action = super().add_argument(*args, **kwargs)
            action.include_in_web_ui = ui
            return action

    parser = LocustLikeParser()
    parser.add_argument("-H", "--host", dest="host")
    parser.add_argument("--seed", dest="locust_seed")  # a clash, as a newer Locust might bring
    add_arguments(parser)
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    for _section, _name, _info, meta in fields():
        flag = meta["flag"]
        if flag in LOCUST_SKIP or flag == "--seed":
            assert flag not in actions or flag == "--seed" and actions[flag].dest == "locust_seed"
            continue
        assert actions[flag].dest == flag[2:].replace("-", "_"), flag
        assert actions[flag].include_in_web_ui == bool(meta.get("ui")), flag
    for flag in ("--think-time", "--think-dist", "--scenario", "--print-scenario", "--run-name"):
        assert flag in actions
    args = parser.parse_args(["--rate", "4", "--input-tokens", "16", "--header", "a:1", "--header", "b:2"])
    assert options_overlay(args) == {"load": {"rate": "4"}, "workload": {"input_tokens": "16"},
                                     "target": {"headers": ["a:1", "b:2"]}}


# -- statistics ------------------------------------------------------------------------------------------------
def fake_records(n: int, seed: int = 0) -> list[RequestRecord]:
    """Records with the shapes a stream produces: multi-token and empty chunks, errors, drops, cancellations."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sched = i * 50_000_000
        r = RequestRecord(index=i, scheduled_ns=sched, input_tokens=64, max_tokens=16)
        roll = rng.random()
        if roll < 0.03:
            r.status = STATUS_DROPPED
            out.append(r)
            continue
        r.issued_ns = sched + int(rng.exponential(300_000))
        if roll < 0.05:
            r.status = STATUS_CANCELLED
        elif roll < 0.10:
            r.status, r.error_kind, r.end_ns = STATUS_ERROR, "http_status" if roll < 0.08 else "timeout", \
                r.issued_ns + 5_000_000
        else:
            r.status = STATUS_OK
            t = int(rng.uniform(5_000, 40_000))
            offsets, tokens = [], []
            while sum(tokens) < 16:
                offsets.append(t)
                k = int(rng.choice([0, 1, 1, 1, 2]))
                tokens.append(min(k, 16 - sum(tokens)) if k else 0)
                t += int(rng.exponential(8_000)) + 1
            r.chunk_offsets_us, r.chunk_tokens = offsets, tokens
            r.end_ns = r.issued_ns + (t + 100) * 1000
            r.server_output_tokens = 16
        out.append(r)
    return out


def exact(records: list[RequestRecord], name: str) -> np.ndarray:
    ok = [r for r in records if r.status == STATUS_OK]
    if name == "itl":
        return np.concatenate([itl_values_ns(r) for r in ok])
    metric = REQUEST_METRICS_BY_NAME[name]
    values = [metric.of_record(r) for r in ok]
    return np.array([v for v in values if v is not None], dtype=np.float64)


def test_deltas_from_several_nodes_merge_to_the_percentiles_of_all_records() -> None:
    records = fake_records(900)
    nodes = [NodeStats(), NodeStats(), NodeStats()]
    merged = LLMStats()
    rng = np.random.default_rng(1)
    for r in records:  # stripes by index, hand-overs at random moments, as Locust's reports come
        nodes[r.index % 3].add(r)
        if rng.random() < 0.05:
            merged.merge(nodes[int(rng.integers(3))].take())
    for node in nodes:
        merged.merge(node.take())
        assert node.take() is None  # a hand-over empties the node
    for name in ("ttft", "tpot", "itl", "e2e"):
        ref = exact(records, name)
        h = merged.hist[name]
        assert h.count == ref.size
        for q in (50, 90, 99, 99.9):
            assert h.percentile(q) == pytest.approx(np.percentile(ref, q), rel=REL), (name, q)
    statuses = [r.status for r in records]
    c = merged.counts
    assert c["completed"] == statuses.count(STATUS_OK) and c["dropped"] == statuses.count(STATUS_DROPPED)
    assert c["errors"] == statuses.count(STATUS_ERROR) and c["cancelled"] == statuses.count(STATUS_CANCELLED)
    assert merged.errors_by_kind()["timeout"] == sum(r.error_kind == "timeout" for r in records)
    assert c["output_tokens"] == 16 * c["completed"]
    rows = {row["metric"]: row for row in merged.rows()}
    assert {"TTFT", "TPOT", "ITL", "E2E", "output tokens/s", "errors: http_status"} <= set(rows)
    assert float(rows["TTFT"]["p50"].replace(",", "")) == pytest.approx(np.percentile(exact(records, "ttft"), 50) / 1e6,
                                                                        rel=2e-3)


def test_the_window_of_recent_deltas_matches_a_merged_histogram() -> None:
    merged = LLMStats()
    node = NodeStats()
    for i, r in enumerate(fake_records(400, seed=5)):
        node.add(r)
        if i % 97 == 0:
            merged.merge(node.take())
    merged.merge(node.take())
    window, _ = merged.current()
    for name in ("ttft", "itl", "e2e"):
        for q in (0, 1, 50, 90, 99.9, 100):
            assert window[name].percentile(q) == merged.hist[name].percentile(q)
    assert np.isnan(SparseWindow(merged.hist["ttft"], []).percentile(50))


def test_measured_window_and_goodput_follow_the_summary_rules(tmp_path: Path) -> None:
    records = fake_records(300, seed=2)
    ctx = LevelContext(name="x", target_rate=20.0, warmup_requests=10, slo={"ttft": 0.03, "itl": 0.02},
                       run_end_ns=300 * 50_000_000)
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r.to_dict()) + b"\n" for r in records))
    ex = lreport.exact_summary([path], ctx)
    node = NodeStats(MeasureWindow(warmup_requests=10), slo=ctx.slo)
    for r in records:
        node.add(r)
    stats = LLMStats()
    stats.merge(node.take())
    approx = lreport.histogram_summary(stats, ctx, build_offsets(ArrivalSpec(rate=20.0, max_requests=300)))
    for key in ("measured_requests", "completed_requests", "error_count", "dropped_count", "output_tokens_total",
                "window_s", "request_throughput_rps", "goodput_rps", "achieved_rate_rps"):
        assert approx[key] == pytest.approx(ex[key], rel=1e-6), key
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "e2e_from_scheduled_ms"):
        for stat in ("p50", "p90", "p99"):
            assert approx[key][stat] == pytest.approx(ex[key][stat], rel=REL), (key, stat)
    assert approx["merged_from_histograms"] and not ex["merged_from_histograms"]
    assert approx["valid"] == ex["valid"]


# -- the open-loop dispatcher ------------------------------------------------------------------------------------
class FakeBackend:
    """Answers after ``service_s`` of gevent time; ``block_s`` holds the whole hub first (a busy generator)."""

    name, endpoint = "fake", "/fake"

    def __init__(self, service_s: float, block_s: float = 0.0) -> None:
        self.service_s = service_s
        self.block_s = block_s
        self.in_flight = self.max_in_flight = 0

    def send(self, spec: object, rec: RequestRecord, t0: int) -> None:
        rec.issued_ns = time.perf_counter_ns() - t0
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.block_s:
                time.sleep(self.block_s)
            gevent.sleep(self.service_s)
            rec.chunk_offsets_us, rec.chunk_tokens = [500], [1]
            rec.status = STATUS_OK
        except gevent.GreenletExit:
            rec.status = STATUS_CANCELLED
            raise
        finally:
            rec.end_ns = time.perf_counter_ns() - t0
            self.in_flight -= 1


def source() -> RequestSource:
    return RequestSource(parse_size("8"), parse_size("4"), PromptBuilder(seed=0), seed=0)


def dispatch(backend: FakeBackend, offsets: np.ndarray, indices: np.ndarray, **kw: object
             ) -> tuple[list[RequestRecord], object]:
    records: list[RequestRecord] = []
    d = OpenLoopDispatcher(backend, source(), records.append, offsets, indices, time.perf_counter_ns() + 20_000_000,
                           **kw)
    outcome = gevent.spawn(d.run).get(timeout=30)
    return records, outcome


def test_a_stripe_is_issued_at_its_deadlines_never_early() -> None:
    offsets = build_offsets(ArrivalSpec(rate=300.0, max_requests=60, seed=4))
    indices, _ = offsets_for_stripe(offsets, 1, 2)
    records, outcome = dispatch(FakeBackend(0.02), offsets, indices)
    assert sorted(r.index for r in records) == list(range(1, 60, 2))
    assert all(r.scheduled_ns == offsets[r.index] and r.issued_ns >= r.scheduled_ns for r in records)
    assert all(r.status == STATUS_OK for r in records)
    assert (outcome.issued, outcome.dropped, outcome.cancelled, outcome.interrupted) == (30, 0, 0, False)


def test_late_requests_are_dropped_and_counted_with_on_late_drop() -> None:
    offsets = build_offsets(ArrivalSpec(kind="constant", rate=1000.0, max_requests=40))
    records, outcome = dispatch(FakeBackend(0.0, block_s=0.004), offsets, np.arange(40), on_late="drop",
                                late_tolerance_ns=1_000_000)
    dropped = [r for r in records if r.status == STATUS_DROPPED]
    assert dropped and all(r.issued_ns is None and "late" in r.error for r in dropped)
    assert outcome.dropped == len(dropped) and outcome.issued + outcome.dropped == 40 == len(records)


def test_the_concurrency_cap_holds_with_drop_and_waits_with_issue() -> None:
    offsets = build_offsets(ArrivalSpec(kind="constant", rate=200.0, max_requests=12))
    backend = FakeBackend(0.03)
    records, outcome = dispatch(backend, offsets, np.arange(12), concurrency=1, on_late="drop")
    assert backend.max_in_flight == 1 and outcome.dropped > 0 and len(records) == 12
    backend = FakeBackend(0.005)
    records, outcome = dispatch(backend, offsets, np.arange(12), concurrency=2)
    assert backend.max_in_flight <= 2 and outcome.dropped == 0 and outcome.issued == 12


def test_stop_cancels_what_is_in_flight_and_records_it() -> None:
    offsets = build_offsets(ArrivalSpec(kind="constant", rate=100.0, max_requests=50))
    records: list[RequestRecord] = []
    d = OpenLoopDispatcher(FakeBackend(5.0), source(), records.append, offsets, np.arange(50),
                           time.perf_counter_ns())
    g = gevent.spawn(d.run)
    gevent.sleep(0.1)
    d.stop()
    outcome = g.get(timeout=20)
    assert outcome.interrupted and outcome.cancelled == outcome.issued > 0
    assert len(records) == outcome.issued and all(r.status == STATUS_CANCELLED for r in records)


# -- the run directory -----------------------------------------------------------------------------------------
def test_loadgen_report_merges_the_workers_records(tmp_path: Path) -> None:
    records = fake_records(200, seed=9)
    ctx = LevelContext(name="locust-x", target_rate=20.0, run_end_ns=200 * 50_000_000)
    (tmp_path / "config.json").write_bytes(orjson.dumps({"level_context": asdict(ctx)}))
    for w in (0, 1):
        lines = [orjson.dumps(r.to_dict()) + b"\n" for r in records if r.index % 2 == w]
        (tmp_path / f"records.w{w}.jsonl").write_bytes(b"".join(lines))
    stats = LLMStats()
    node = NodeStats()
    for r in records[:50]:  # the master saw only part of it: its summary must not be kept
        node.add(r)
    stats.merge(node.take())
    (tmp_path / "summary.json").write_bytes(orjson.dumps(lreport.histogram_summary(stats, ctx, None)))
    summaries, note = load_run_dir(tmp_path)
    assert note is not None and "records.w0.jsonl, records.w1.jsonl" in note and "histograms" in note
    assert summaries[0]["records_total"] == 200 and summaries[0]["recomputed"]
    exact_all = lreport.exact_summary(level_records_files(tmp_path), ctx)
    assert summaries[0]["ttft_ms"] == exact_all["ttft_ms"]


def test_the_html_block_goes_in_once() -> None:
    stats = LLMStats()
    page = "<html><body><div id=\"root\"></div><script>x</script></body></html>"
    block = lreport.html_block({"valid": False, "warnings": ["too few"]}, stats)
    once = lreport.inject_html(page, block)
    assert once.index("loadgen-llm-metrics") < once.index("<script>") and "TTFT" in once and "too few" in once
    assert lreport.inject_html(once, block) == once


def test_a_bug_inside_a_request_is_a_protocol_error_and_a_kill_goes_through():
    """Locust's dispatch and session drivers send through ``send_guarded``: a codec or transport bug ends that
    request as a protocol error with its text (the record is kept, the run goes on); a greenlet kill is not
    swallowed."""
    import gevent

    from loadgen.core.records import RequestRecord
    from loadgen.locust.dispatch import send_guarded

    class Buggy:
        def __init__(self, exc):
            self.exc = exc

        def send(self, spec, rec, t0):
            rec.issued_ns = 5
            raise self.exc

    rec = RequestRecord(index=3, scheduled_ns=0)
    send_guarded(Buggy(KeyError("no such field")), None, rec, 0)
    assert rec.status == "error" and rec.error_kind == "protocol" and "KeyError" in rec.error
    with pytest.raises(gevent.GreenletExit):
        send_guarded(Buggy(gevent.GreenletExit()), None, RequestRecord(index=4, scheduled_ns=0), 0)
