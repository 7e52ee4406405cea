"""A Locust worker's own part of a level: its stripe from the master's plan, its records spooled on its own
disk until the master has them all, and the moment it really reached t0 (the master's start-spread check).

A mixin of ``loadgen.locust.session.LocustSession`` (it uses the session's state and ``_start_node``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from loadgen.locust import clock as lclock
from loadgen.locust.args import level_from_wire
from loadgen.locust.collect import drop_spool
from loadgen.locust.dispatch import sleep_until

log = logging.getLogger("loadgen.locust")


class WorkerSide:
    """What only a worker does: start from the master's plan, spool its records, note its real start."""

    environment: Any
    options: Any
    _level: dict | None

    def _start_worker(self) -> None:
        plan = getattr(self.options, "loadgen_plan", None)
        runner = self.environment.runner
        if not plan:
            log.warning("loadgen: no plan from the master (it could not start the level; see its log)")
            return
        stripe = plan["stripes"].get(runner.client_id)
        if stripe is None:
            log.warning("loadgen: this worker joined after the level was planned; it sends nothing this level")
            return
        from loadgen.level.plan import plan_level

        level = level_from_wire(plan["level"], self.options)  # exactly the master's scenario: the same schedule
        self.seed, self.think_time_s, self.think_dist = level.scenario.load.seed, level.think_time_s, level.think_dist
        self.run_dir = Path(plan["run_dir"])
        self._level = {"level": level, "plan": plan, "dones": {}, "finalized": False, "ending": False}
        self._start_node(plan, stripe, level, plan_level(level.scenario), None)

    @staticmethod
    def _spool(run_dir: Path, stripe: int) -> Path:
        """A worker's own records file, on its own disk (shipped to the master's run directory as it grows)."""
        import tempfile

        spool = Path(tempfile.gettempdir()) / "loadgen-worker-spool" / run_dir.name
        spool.mkdir(parents=True, exist_ok=True)
        return spool / f"records.w{stripe}.jsonl"

    def _t0_watch(self, lv: dict) -> None:
        """When this worker actually reached t0, on its wall clock: the master's start-spread check."""
        sleep_until(lv["t0"])
        lv["t0_start_wall_ns"] = lclock.wall_ns()

    def on_records_ack(self) -> None:
        """Worker: the master has every record of this stripe: the spool file is not needed any more."""
        lv = self._level
        if lv is not None and lv.get("shipper") is not None and lv.get("node_done"):
            drop_spool(Path(lv["records"]))
