"""The master's side of a distributed Locust level: the workers' clocks before t0, their records and last
messages during and after the run, lost workers, and the summary's client block with the distributed figures.

A mixin of ``loadgen.locust.session.LocustSession`` (it uses the session's ``_level`` state, ``environment``,
``options`` and ``stats``): the session keeps the level's lifecycle, this module what only a master does.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent

from loadgen.locust import clock as lclock
from loadgen.locust.collect import RECORDS_ACK
from loadgen.locust.level import client_block

log = logging.getLogger("loadgen.locust")
STOP_MESSAGE = "loadgen_stop"
FINAL_WAIT_S = 30.0  # the master waits this long for the workers' last messages when a run is cut short
CLOCK_WAIT_S = 0.25  # the master waits this long for each round of clock answers


class MasterSide:
    """What the master (and, for ``_client``, the local runner) does beside the level's lifecycle."""

    environment: Any
    options: Any
    stats: Any
    role: str
    _level: dict | None

    def _sync_clocks(self, nodes: list[str]) -> lclock.ClockCheck:
        """A few NTP-style exchanges with every worker before t0 is chosen (``loadgen.locust.clock``)."""
        check = lclock.ClockCheck(float(getattr(self.options, "clock_tolerance_ms", lclock.TOLERANCE_MS)))
        self._clock = check
        runner = self.environment.runner
        for r in range(lclock.ROUNDS):
            for node in nodes:
                runner.send_message(lclock.PING, {"t1": lclock.wall_ns(), "seq": r}, client_id=node)
            end = time.monotonic() + CLOCK_WAIT_S
            while time.monotonic() < end and any(len(check.exchanges.get(n, ())) <= r for n in nodes):
                gevent.sleep(0.002)
        missing = [n for n in nodes if not check.exchanges.get(n)]
        if missing:
            log.warning("loadgen: no clock answer from %s: their t0 rests on their wall clocks, unchecked",
                        ", ".join(missing))
        return check

    def on_clock_pong(self, client_id: str, data: dict) -> None:
        t4 = lclock.wall_ns()
        check = getattr(self, "_clock", None)
        if check is not None:
            check.add(client_id, data, t4)

    def on_records(self, data: dict) -> None:
        lv = self._level
        if lv is not None and lv.get("collector") is not None and not lv["finalized"]:
            lv["collector"].receive(data)

    def _watch_workers(self, lv: dict) -> None:
        """A worker that Locust marks missing (no heartbeat) or that left without its last message is lost: it is
        reported with the records that reached the master, and the level ends without waiting for it."""
        from locust.runners import STATE_MISSING

        runner = self.environment.runner
        while not lv["finalized"]:
            gevent.sleep(0.5)
            for cid, stripe in lv["plan"]["stripes"].items():
                if stripe in lv["dones"] or stripe in lv["lost"]:
                    continue
                node = runner.clients.get(cid)
                if node is None or node.state == STATE_MISSING:
                    recovered = lv["collector"].lines.get(stripe, 0)
                    lv["lost"][stripe] = {"stripe": stripe, "client_id": cid, "records_recovered": recovered}
                    log.warning("loadgen: worker %d (%s) was lost mid-run; %d of its records reached the master",
                                stripe, cid, recovered)
            if lv["lost"] and len(lv["dones"]) + len(lv["lost"]) >= lv["plan"]["n"] and not lv.get("stopping"):
                self._end_test()
                return

    def on_done_message(self, done: dict) -> None:
        lv = self._level
        if lv is None or lv["finalized"]:
            return
        lv["dones"][done["stripe"]] = done
        lv.get("lost", {}).pop(done["stripe"], None)  # reported late, but reported: not lost
        collector = lv.get("collector")
        if collector is not None and done.get("client_id") and collector.complete(done["stripe"], done["written"]):
            self.environment.runner.send_message(RECORDS_ACK, {"stripe": done["stripe"]}, client_id=done["client_id"])
        self.stats.merge(done.get("delta"))
        if len(lv["dones"]) + len(lv.get("lost", {})) >= lv["plan"]["n"] and not lv.get("stopping"):
            self._end_test()

    def _wait_for_workers(self, lv: dict) -> None:
        end = time.monotonic() + FINAL_WAIT_S
        while len(lv["dones"]) + len(lv["lost"]) < lv["plan"]["n"] and time.monotonic() < end:
            if not lv["stop_sent"]:
                lv["stop_sent"] = True
                self.environment.runner.send_message(STOP_MESSAGE, {})
            gevent.sleep(0.1)
        missing = lv["plan"]["n"] - len(lv["dones"]) - len(lv["lost"])
        if missing:
            log.warning("loadgen: %d worker(s) sent no final message; their last stats are missing", missing)

    def _client(self, lv: dict, dones: list[dict]) -> dict:
        """The summary's client block, with the clock anchor that puts server metrics and power on the records'
        time axis: t0 on this process's monotonic clock (a local runner's own; the master's from the planned
        wall-clock t0)."""
        from loadgen.core.clock import wall_anchor

        client = client_block(dones, lv["plan"]["n"])
        anchor = wall_anchor()
        t0 = lv.get("t0") if self.role == "local" else \
            anchor["monotonic_ns"] + (lv["plan"]["t0_wall_ns"] - anchor["wall_ns"])
        if t0 is not None:
            client["anchor"], client["t0_offset_ns"] = anchor, int(t0) - int(anchor["monotonic_ns"])
        if self.role == "master":
            client.update(self._distributed_block(lv, dones))
        else:
            client["t0_skew_ms"] = 0.0  # one process: one clock, one start
        return client

    def _distributed_block(self, lv: dict, dones: list[dict]) -> dict:
        """Clock agreement and start spread (``t0_skew_ms``), record collection and lost workers."""
        out: dict[str, Any] = {}
        starts = {d["client_id"]: (d["stripe"], int(d["t0_start_wall_ns"])) for d in dones
                  if d.get("client_id") and d.get("t0_start_wall_ns")}
        check = lv.get("clock") or lclock.ClockCheck()
        clock = check.report(starts, lv["plan"]["t0_wall_ns"])
        out["clock"] = clock
        out["t0_skew_ms"] = clock["t0_skew_ms"]
        for stripe in clock["offset_beyond_tolerance"]:
            log.warning("loadgen: worker %d: wall clock off by more than %g ms from the master's (or not measured); "
                        "its t0 was corrected by the measured offset, see summary client.clock", stripe,
                        clock["tolerance_ms"])
        collector = lv["collector"]
        out["records_collected"] = {str(k): v for k, v in sorted(collector.lines.items())}
        out["lost_workers"] = sorted(lv["lost"].values(), key=lambda r: r["stripe"])
        return out
