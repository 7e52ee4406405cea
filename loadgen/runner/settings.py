"""The resolved settings of one load level, and what of them is written to ``config.json`` (never secrets)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from loadgen.errors import UsageError

_DUR = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_UNITS = {None: 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
SECRET_HEADERS = ("authorization", "api-key", "x-api-key", "proxy-authorization", "cookie")


def parse_seconds(text: str | float | int, flag: str) -> float:
    """'60' and '60s' -> 60.0; '2m' -> 120.0; '500ms' -> 0.5. A bare number means seconds."""
    m = _DUR.match(str(text))
    if not m:
        raise UsageError(f"{flag} {text!r}: expected a duration such as 30, 30s, 500ms, 2m or 1h")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class RunSettings:
    url: str | None
    backend: str = "triton-http"
    model: str = "ensemble"
    headers: dict[str, str] = field(default_factory=dict)
    verify_tls: bool = True
    extra_items: list[str] = field(default_factory=list)
    parameter_items: list[str] = field(default_factory=list)
    perf_metrics: bool = False
    ignore_eos: bool = True
    min_tokens: bool = True
    continuous_usage: bool = False
    http_client: str = "fast"
    server_model: str = "opt-1.3b"
    server_gpu: str = "h100-64gb"
    server_replicas: int = 1
    server_max_batch: int = 64
    server_speed: float = 1.0
    arrival: str = "poisson"
    rate: float | None = None
    cv: float | None = None
    concurrency: int | None = None
    duration_s: float | None = None
    max_requests: int | None = None
    seed: int = 0
    on_late: str = "issue"
    late_tolerance_s: float = 0.01
    input_tokens: str = "128"
    output_tokens: str = "128"
    tokenizer: str | None = None
    warmup_requests: int = 0
    warmup_s: float = 0.0
    cooldown_s: float = 0.0
    request_timeout_s: float = 300.0
    drain_timeout_s: float = 60.0
    max_connection_errors: int = 50
    name: str | None = None
    out_dir: str = "runs"
    slo_text: str | None = None
    fail_on_text: str | None = None
    live: bool = True
    power: str = "none"  # --power SOURCE: nvml | triton[=URL] | nvidia-smi | none (loadgen.power)
    power_interval_s: float = 0.1
    power_gpus: str | None = None
    idle_s: float = 5.0
    workers: int = 1  # worker processes sharing the schedule (loadgen.runner.workers)
    trace: dict[str, Any] | None = None  # --trace replay options (loadgen.traces.runargs.trace_options)

    @property
    def closed_loop(self) -> bool:
        from loadgen.traces.runargs import is_synthetic

        return self.rate is None and not self.trace and not is_synthetic(self.arrival)

    def default_name(self) -> str:
        if self.name:
            return self.name
        if self.trace:  # trace replay: named after the trace file
            return f"{self.backend}-trace-{re.sub(r'[.].*$', '', self.trace['path'].split('/')[-1])}"
        if self.rate is None and not self.closed_loop:  # synthetic arrivals at the model's own rates
            return f"{self.backend}-{self.arrival.split(':', 1)[0]}"
        load = f"c{self.concurrency}" if self.closed_loop else f"{self.arrival.split(':', 1)[0]}-{self.rate:g}rps"
        return f"{self.backend}-{load}"

    def public_dict(self) -> dict[str, Any]:
        """The settings as written to config.json: secret header values are replaced by '<redacted>'."""
        d = asdict(self)
        d["headers"] = {k: ("<redacted>" if k.lower() in SECRET_HEADERS else v) for k, v in self.headers.items()}
        return d
