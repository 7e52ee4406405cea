"""Replication as the study ran it: MPS on or off, the memory share per replica and an even spread of requests.

Unit tests cover the admission counts that make the spread even (two handles on one file stand for two replica
processes; a fake clock for the bounded wait), the settings from flags, files and sweep grids, and what the model
repository passes to the engine. One integration test sends a burst to the session's embedded server (two
replicas, spread even by default) and reads each replica's completed-request counter.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import tomllib
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from loadgen.emulator.spread import AdmissionCounts, check_spread
from loadgen.errors import UsageError
from loadgen.scenario.check import build, resolve
from loadgen.serve.repository import EmulatedModelSpec, write_emulated_repository
from loadgen.sweep.analysis import replication_table
from loadgen.sweep.grid import spec_from_mapping

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ admission counts
def test_a_replica_ahead_waits_until_the_others_caught_up(tmp_path: Path) -> None:
    path = str(tmp_path / "gpu.state.spread")
    a, b = AdmissionCounts(2, path), AdmissionCounts(2, path)  # two processes' views of one file
    try:
        assert a.take(0) == 1
        assert a.lead(0) == 1 and b.lead(1) == 0
        now = [0.0]
        sleeps: list[float] = []

        def sleep(dt: float) -> None:  # the other replica takes a request while replica 0 waits
            sleeps.append(dt)
            now[0] += dt
            if len(sleeps) == 3:
                b.take(1)

        assert a.wait_turn(0, max_wait_s=1.0, sleep=sleep, clock=lambda: now[0])
        assert len(sleeps) == 3 and a.counts() == b.counts() == [1, 1]
        assert b.wait_turn(1, max_wait_s=1.0, sleep=sleep, clock=lambda: now[0])  # level: no wait
        assert len(sleeps) == 3
    finally:
        a.close()
        b.close()


def test_the_wait_is_bounded_and_a_lull_leaves_no_lead(tmp_path: Path) -> None:
    counts = AdmissionCounts(3, str(tmp_path / "s"))
    try:
        counts.take(2, 5)
        now = [0.0]

        def sleep(dt: float) -> None:
            now[0] += dt

        assert not counts.wait_turn(2, max_wait_s=10, stopping=lambda: True, sleep=sleep, clock=lambda: now[0])
        assert counts.lead(2) == 5  # a stop keeps the counts
        assert not counts.wait_turn(2, max_wait_s=0.05, sleep=sleep, clock=lambda: now[0])
        assert 0.05 <= now[0] < 0.06
        # a lull's lead is forgiven: the next burst is shared by all three, not sent to the other two alone
        assert counts.counts() == [0, 0, 0] and counts.wait_turn(2, max_wait_s=0.05, sleep=sleep)
    finally:
        counts.close()


def test_counts_file_of_another_server_is_refused(tmp_path: Path) -> None:
    AdmissionCounts(2, str(tmp_path / "s")).close()
    with pytest.raises(UsageError, match="made for 2 replica"):
        AdmissionCounts(4, str(tmp_path / "s"))
    with pytest.raises(UsageError, match="--server-spread 'fair': choose even"):
        check_spread("fair")


# ------------------------------------------------------------------------------------------ settings
def test_server_settings_from_a_file_and_their_checks() -> None:
    s = build({"server": {"replicas": 2, "mps": False, "spread": "triton", "replica_memory": 0.25}}).server
    assert (s.mps, s.spread, s.replica_memory) == ("off", "triton", 0.25)
    assert build({"server": {"mps": "ON"}}).server.mps == "on"
    with pytest.raises(UsageError, match="--mps 'maybe': choose one of on, off"):
        resolve(build({"server": {"mps": "maybe"}}), check_paths=False)
    with pytest.raises(UsageError, match="--server-spread 'random': choose one of even, triton"):
        resolve(build({"server": {"spread": "random"}}), check_paths=False)
    with pytest.raises(UsageError, match=r"--server-replica-memory 0.75 is invalid for 2 replica"):
        resolve(build({"server": {"replicas": 2, "replica_memory": 0.75}, "load": {"rate": 1, "requests": 1}}),
                check_paths=False)


def test_memory_share_sizes_each_replica_and_is_checked() -> None:
    from loadgen.emulator.profiles import get_gpu, get_model, kv_pool_blocks

    half = EmulatedModelSpec(profile="opt-1.3b", max_batch=256, replicas=2)
    quarter = EmulatedModelSpec(profile="opt-1.3b", max_batch=256, replicas=2, replica_memory=0.25)
    assert half.effective_memory_fraction == pytest.approx(0.9)
    assert quarter.effective_memory_fraction == pytest.approx(0.45)
    m, g = get_model("opt-1.3b"), get_gpu("h100-64gb")
    assert kv_pool_blocks(m, g, 2, quarter.effective_memory_fraction) < kv_pool_blocks(m, g, 2, 0.9) / 1.9
    with pytest.raises(UsageError, match=r"--server-replica-memory 0.6 is invalid for 2 replica\(s\)"):
        EmulatedModelSpec(replicas=2, replica_memory=0.6).validate()
    with pytest.raises(UsageError, match="max batch 768 does not fit"):
        EmulatedModelSpec(profile="opt-1.3b", max_batch=768, replicas=2, replica_memory=0.1).validate()


def test_repository_passes_mps_and_spread_to_every_replica(tmp_path: Path) -> None:
    spec = EmulatedModelSpec(replicas=2, max_batch=64, mps=False, spread="triton", replica_memory=0.4)
    repo = write_emulated_repository(spec, tmp_path / "repo", tmp_path / "gpu.state")
    cfg = text_format.Parse((repo / "ensemble" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["mps"] == "off" and params["spread"] == "triton"
    assert float(params["gpu_memory_fraction"]) == pytest.approx(0.9 * 0.4 * 2)


def test_replication_study_file_runs_every_configuration() -> None:
    d = tomllib.loads((ROOT / "scenarios" / "study" / "replication.toml").read_text())
    spec = spec_from_mapping(d, "replication.toml")
    configs = {(t.replicas, t.max_batch, t.mps) for t in spec.targets}
    want = {(1, 768, "on")} | {(1, b, "on") for b in (96, 128, 256)}
    want |= {(n, b, m) for n in (2, 4) for b in (96, 128, 256) for m in ("on", "off")}
    assert configs == want
    assert all(t.spread == "even" for t in spec.targets)
    labels = {t.label for t in spec.targets}
    assert "2x256 MPS" in labels and "2x256 no-MPS" in labels and len(labels) == len(spec.targets)
    assert spec.targets[1].params()["mps"] in ("on", "off")  # a restart command can use {mps}


def test_mps_is_a_grid_axis_and_the_table_orders_mps_first() -> None:
    spec = spec_from_mapping({"sweep": {"offline": [100]},
                              "server": {"replicas": [2], "max_batch": [64], "mps": ["on", "off"]}})
    assert [(t.label, t.mps) for t in spec.targets] == [("2x64 MPS", "on"), ("2x64 no-MPS", "off")]
    with pytest.raises(UsageError, match="use on or off"):
        spec_from_mapping({"sweep": {"offline": [100]}, "server": {"mps": ["on", "sometimes"]}})
    rows = [{"point": p, "replicas": r, "max_batch": b, "mps": m, "throughput": t, "load_kind": "offline"}
            for p, r, b, m, t in [("a", 2, 256, "off", 12000), ("b", 1, 768, "on", 10000), ("c", 2, 256, "on", 13400)]]
    table = replication_table(rows)
    assert [x["point"] for x in table] == ["b", "c", "a"]
    assert table[1]["gain"] == pytest.approx(0.34) and table[2]["gain"] == pytest.approx(0.2)


# ------------------------------------------------------------------------------------------ the real server
def _completed(metrics_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    out = {}
    for m in re.finditer(r"loadgen_emulated_requests_completed_total\{([^}]*)\} (\S+)", text):
        out[re.search(r'instance="([^"]+)"', m.group(1)).group(1)] = float(m.group(2))
    return out


async def _burst(url: str, n: int) -> list[int]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one() -> int:
            body = {"text_input": "a short prompt " * 8, "max_tokens": 4}
            async with s.post(f"{url}/v2/models/ensemble/generate", json=body) as r:
                await r.read()
                return r.status

        return await asyncio.gather(*(one() for _ in range(n)))


def test_a_burst_is_spread_evenly_over_the_replicas(embedded_server) -> None:
    s = embedded_server
    assert s.config.replicas == 2 and s.config.spread == "even"
    before = _completed(s.metrics_url)
    statuses = asyncio.run(_burst(s.http_url, 60))
    assert statuses == [200] * 60
    for _ in range(50):  # the counters are published every metrics interval
        after = _completed(s.metrics_url)
        done = {k: after[k] - before.get(k, 0.0) for k in after}
        if sum(done.values()) >= 60:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert sum(done.values()) == 60 and len(done) == 2
    # round robin: the counts never differ by more than one, plus one for whatever the session sent before
    assert max(done.values()) - min(done.values()) <= 2, done
