"""What the server itself says during a point: running batch, KV-cache usage, preemptions (Prometheus metrics).

The study's batch is the engine's mean number of *running* requests (the client's in-flight count also holds the
queued ones), and runs with KV-cache preemptions are flagged. Both come from the server's metrics endpoint when
there is one: the embedded server (``loadgen_emulated_*`` and TensorRT-LLM's ``nv_trt_llm_*`` names), Triton with
TensorRT-LLM (``nv_trt_llm_*``) and vLLM (``vllm:*``). The level's one scraper, the server-metrics sampler
(``loadgen.telemetry.server_metrics``, 5 Hz in a sweep), hands each scrape to ``ServerWatch.feed``; a server
without the endpoint just leaves these columns empty.
"""

from __future__ import annotations

from typing import Any

# (metric name, label that must match or None): the first family present wins
RUNNING = (("loadgen_emulated_requests", ("state", "running")),
           ("nv_trt_llm_request_metrics", ("request_type", "scheduled")),
           ("vllm:num_requests_running", None))
KV_USAGE = (("loadgen_emulated_kv_cache_usage_ratio", None),
            ("nv_trt_llm_kv_cache_block_metrics", ("kv_cache_block_type", "fraction")),
            ("vllm:gpu_cache_usage_perc", None), ("vllm:kv_cache_usage_perc", None))
PREEMPTIONS = (("loadgen_emulated_preemptions_total", None), ("vllm:num_preemptions_total", None))
STEP_LAG = (("loadgen_emulated_step_lag_seconds", ("quantile", "0.99")),)
SEND_DELAY = (("loadgen_emulated_send_delay_seconds", ("quantile", "0.99")),)
COMPLETED = "loadgen_emulated_requests_completed_total"  # per replica (label "instance"): the load balance
# the sample names read from a scrape (the sampler's prefilter, vocabulary.KNOWN, keeps them all)
WANTED = frozenset({name for fams in (RUNNING, KV_USAGE, PREEMPTIONS, STEP_LAG, SEND_DELAY) for name, _ in fams}
                   | {COMPLETED})


def pick(samples: list[tuple[str, dict[str, str], float]], families: tuple) -> list[float] | None:
    """The values (one per series, e.g. per replica) of the first family present, or None."""
    for name, match in families:
        vals = [v for n, lab, v in samples if n == name and (match is None or lab.get(match[0]) == match[1])]
        if vals:
            return vals
    return None


class ServerWatch:
    """Aggregates the scrapes a level's sampler hands to ``feed``; ``result()`` sums them up."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, list | None, list | None, list | None, list | None, list | None]] = []
        self.error: str | None = None
        self.first_completed: dict[str, float] | None = None
        self.last_completed: dict[str, float] | None = None

    def feed(self, t_ns: int, s: list[tuple[str, dict[str, str], float]]) -> None:
        """One scrape's samples (``parse_samples`` output), from the sampler's thread."""
        self.samples.append((t_ns, pick(s, RUNNING), pick(s, KV_USAGE), pick(s, PREEMPTIONS),
                             pick(s, STEP_LAG), pick(s, SEND_DELAY)))
        done = {lab.get("instance", ""): v for n, lab, v in s if n == COMPLETED}
        if done:
            self.first_completed = self.first_completed or done
            self.last_completed = done

    def result(self) -> dict[str, Any]:
        """Mean running requests per replica over the busy samples, KV peak, preemptions during the point."""
        running = [sum(r) / len(r) for _, r, *_ in self.samples if r]
        busy = [x for x in running if x > 0]
        kv = [max(k) for _, _, k, *_ in self.samples if k]
        pre = [sum(p) for _, _, _, p, *_ in self.samples if p]
        lag = [max(x) for *_, x, _ in self.samples if x]
        delay = [max(x) for *_, x in self.samples if x]
        return {
            "samples": len(self.samples),
            "engine_running_mean": round(sum(busy) / len(busy), 3) if busy else None,
            "kv_peak": round(max(kv), 4) if kv else None,
            "preemptions": int(pre[-1] - pre[0]) if len(pre) >= 2 else None,
            "step_lag_p99_ms_max": round(1e3 * max(lag), 3) if lag else None,
            "send_delay_p99_ms_max": round(1e3 * max(delay), 3) if delay else None,
            "requests_per_replica": self._per_replica(),
            "error": self.error if not self.samples else None,
        }

    def _per_replica(self) -> list[int] | None:
        """Requests each replica completed during the point (how evenly the server spread them)."""
        a, b = self.first_completed, self.last_completed
        if not a or not b:
            return None
        return [int(b[k] - a.get(k, 0.0)) for k in sorted(b)]
