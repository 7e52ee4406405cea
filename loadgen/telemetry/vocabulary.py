"""One vocabulary for what LLM servers say about themselves: queued, running, kv_usage, preemptions, cache_hit_rate.

Why: every server family names its scheduler state differently (and TensorRT-LLM packs it into labels of one
family), while a reader of a run wants the same five series whatever served it. ``CommonReader.read`` turns one
scrape (``loadgen.telemetry.prometheus.parse_samples``) into those five values, says which server it recognised,
and keeps only the sample names that matter for that server (a vLLM or Triton page holds hundreds of histogram
buckets that would bloat ``server_metrics.jsonl``).

The five values, whatever the server:

* ``queued``: requests waiting for the engine; ``running``: requests in the engine's running batch. Both summed
  over replicas, instances and data-parallel engines.
* ``kv_usage``: share of the KV cache in use, 0..1 (mean over replicas/engines; TensorRT-LLM: used / max blocks).
* ``preemptions``: cumulative count since the server started (KV-cache preemptions, SGLang's retractions).
* ``cache_hit_rate``: prefix-cache hit rate, 0..1: SGLang's own gauge, or for vLLM and the embedded emulator the
  hits / queries (prompt tokens) of the interval since the previous scrape (null when no query arrived in
  between).

A value the server does not publish is None (null in the file), never 0.

Names, and where they were checked (public docs or sources, through the project's search tool):

* Triton core: ``nv_inference_pending_request_count{model=...}`` (``docs/PROTOCOLS.md``; verified), used as
  ``queued`` only where nothing better exists: the busiest model's count (an ensemble and its steps would each
  count the same request).
* TensorRT-LLM backend: ``nv_trt_llm_request_metrics{request_type=active|max|scheduled|context|waiting}`` and
  ``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max|free|used|tokens_per|reused|fraction}`` (verified in
  the backend's ``custom_metrics_reporter.cc``). ``reused`` is a cumulative block count with no matching "missed"
  count, so it is kept in the samples but gives no hit rate.
* The embedded emulator: ``loadgen_emulated_requests{state=running|waiting}``,
  ``loadgen_emulated_kv_cache_usage_ratio``, ``loadgen_emulated_preemptions_total``,
  ``loadgen_emulated_prefix_cache_hits_total`` / ``loadgen_emulated_prefix_cache_queries_total`` (tokens, as
  vLLM counts them) and ``loadgen_emulated_requests_cancelled_total`` (this repository's ``servers/emulated``; it
  also repeats the TensorRT-LLM names, so it is recognised first).
* vLLM: ``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:gpu_cache_usage_perc`` (v0) or
  ``vllm:kv_cache_usage_perc`` (v1), ``vllm:num_preemptions_total``, ``vllm:prefix_cache_hits_total`` /
  ``vllm:prefix_cache_queries_total`` (verified: vLLM's metrics docs and design notes; the older
  ``vllm:gpu_prefix_cache_*_total`` spelling is read too, seen in third-party scrapers only).
* SGLang: ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage``,
  ``sglang:cache_hit_rate`` (verified: SGLang's production-metrics docs and its ``metrics/collector.py``);
  ``sglang:num_retracted_requests_total`` as preemptions (seen in third-party scrapers, not verified upstream).
* TGI: ``tgi_queue_size``, ``tgi_batch_current_size`` (verified: TGI's metrics reference); TGI publishes no KV
  usage, preemption or cache figure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from loadgen.telemetry.prometheus import Sample

COMMON_KEYS = ("queued", "running", "kv_usage", "preemptions", "cache_hit_rate")
Common = dict[str, float | None]
Index = dict[str, list[tuple[dict[str, str], float]]]

TRITON_CORE = frozenset({"nv_inference_pending_request_count", "nv_inference_request_success",
                         "nv_inference_request_failure", "nv_inference_queue_duration_us", "nv_gpu_utilization",
                         "nv_gpu_power_usage", "nv_gpu_memory_used_bytes"})
EMULATOR = frozenset({"loadgen_emulated_requests", "loadgen_emulated_kv_cache_usage_ratio",
                      "loadgen_emulated_preemptions_total", "loadgen_emulated_requests_completed_total",
                      "loadgen_emulated_tokens_total", "loadgen_emulated_step_lag_seconds",
                      "loadgen_emulated_send_delay_seconds", "loadgen_emulated_outbox_depth",
                      "loadgen_emulated_gpu_power_watts", "loadgen_emulated_prefix_cache_hits_total",
                      "loadgen_emulated_prefix_cache_queries_total",
                      "loadgen_emulated_prefix_cache_reused_blocks_total", "loadgen_emulated_prefix_cache_hit_ratio",
                      "loadgen_emulated_requests_cancelled_total"})
TRTLLM = frozenset({"nv_trt_llm_request_metrics", "nv_trt_llm_kv_cache_block_metrics",
                    "nv_trt_llm_inflight_batcher_metrics"})
VLLM = frozenset({"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:num_requests_swapped",
                  "vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc", "vllm:num_preemptions_total",
                  "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total",
                  "vllm:gpu_prefix_cache_hits_total", "vllm:gpu_prefix_cache_queries_total",
                  "vllm:prompt_tokens_total", "vllm:generation_tokens_total"})
SGLANG = frozenset({"sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage",
                    "sglang:cache_hit_rate", "sglang:num_retracted_requests_total", "sglang:gen_throughput",
                    "sglang:prompt_tokens_total", "sglang:generation_tokens_total"})
TGI = frozenset({"tgi_queue_size", "tgi_batch_current_size", "tgi_batch_current_max_tokens", "tgi_request_count"})
# every sample name any known server keeps: the prefilter of each scrape (unknown pages are parsed whole)
KNOWN = TRITON_CORE | EMULATOR | TRTLLM | VLLM | SGLANG | TGI


def index(samples: list[Sample]) -> Index:
    ix: Index = defaultdict(list)
    for name, labels, value in samples:
        ix[name].append((labels, value))
    return ix


def _match(ix: Index, name: str, match: dict[str, str]) -> list[float]:
    return [v for lab, v in ix.get(name, ()) if all(lab.get(k) == want for k, want in match.items())]


def total(ix: Index, name: str, **match: str) -> float | None:
    """Sum over the matching series (replicas, engines), None when there is none."""
    vals = _match(ix, name, match)
    return float(sum(vals)) if vals else None


def mean(ix: Index, name: str, **match: str) -> float | None:
    vals = _match(ix, name, match)
    return float(sum(vals) / len(vals)) if vals else None


def first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _busiest_model(ix: Index, name: str) -> float | None:
    per_model: dict[str, float] = defaultdict(float)
    for lab, v in ix.get(name, ()):
        per_model[lab.get("model", "")] += v
    return max(per_model.values()) if per_model else None


def _ratio_of_sums(ix: Index, name: str, label: str, part: str, whole: str) -> float | None:
    a, b = total(ix, name, **{label: part}), total(ix, name, **{label: whole})
    return a / b if a is not None and b else None


class CommonReader:
    """Turns scrapes into the common values; remembers the last counters, for interval rates."""

    def __init__(self) -> None:
        self._prev: dict[str, float] = {}

    def read(self, samples: list[Sample]) -> tuple[str | None, Common, list[Sample]]:
        """(server kind or None, the five values, the samples worth keeping for that kind)."""
        ix = index(samples)
        for kind in KINDS:
            if kind.marker in ix:
                common = kind.read(ix, self)
                kept = [s for s in samples if s[0] in kind.keep]
                return kind.name, {k: common.get(k) for k in COMMON_KEYS}, kept
        return None, dict.fromkeys(COMMON_KEYS), samples

    def interval_ratio(self, key: str, hits: float | None, queries: float | None) -> float | None:
        """hits / queries of the counters' growth since the previous scrape (None without growth or a previous
        value; a counter that went down is a server restart)."""
        ph, pq = self._prev.get(key + ":h"), self._prev.get(key + ":q")
        if hits is None or queries is None:
            return None
        self._prev[key + ":h"], self._prev[key + ":q"] = hits, queries
        if ph is None or pq is None or queries <= pq or hits < ph:
            return None
        return min(1.0, max(0.0, (hits - ph) / (queries - pq)))


def _emulator(ix: Index, r: CommonReader) -> Common:
    return {"queued": total(ix, "loadgen_emulated_requests", state="waiting"),
            "running": total(ix, "loadgen_emulated_requests", state="running"),
            "kv_usage": mean(ix, "loadgen_emulated_kv_cache_usage_ratio"),
            "preemptions": total(ix, "loadgen_emulated_preemptions_total"),
            "cache_hit_rate": r.interval_ratio("emulator", total(ix, "loadgen_emulated_prefix_cache_hits_total"),
                                               total(ix, "loadgen_emulated_prefix_cache_queries_total"))}


def _trtllm(ix: Index, _r: CommonReader) -> Common:
    req, kv, lab = "nv_trt_llm_request_metrics", "nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type"
    return {"queued": first(total(ix, req, request_type="waiting"),
                            _busiest_model(ix, "nv_inference_pending_request_count")),
            "running": first(total(ix, req, request_type="scheduled"), total(ix, req, request_type="active")),
            "kv_usage": first(_ratio_of_sums(ix, kv, lab, "used", "max"), mean(ix, kv, kv_cache_block_type="fraction"))}


def _triton(ix: Index, _r: CommonReader) -> Common:
    return {"queued": _busiest_model(ix, "nv_inference_pending_request_count")}


def _vllm(ix: Index, r: CommonReader) -> Common:
    hits = first(total(ix, "vllm:prefix_cache_hits_total"), total(ix, "vllm:gpu_prefix_cache_hits_total"))
    queries = first(total(ix, "vllm:prefix_cache_queries_total"), total(ix, "vllm:gpu_prefix_cache_queries_total"))
    return {"queued": total(ix, "vllm:num_requests_waiting"),
            "running": total(ix, "vllm:num_requests_running"),
            "kv_usage": first(mean(ix, "vllm:kv_cache_usage_perc"), mean(ix, "vllm:gpu_cache_usage_perc")),
            "preemptions": total(ix, "vllm:num_preemptions_total"),
            "cache_hit_rate": r.interval_ratio("vllm", hits, queries)}


def _sglang(ix: Index, _r: CommonReader) -> Common:
    return {"queued": total(ix, "sglang:num_queue_reqs"), "running": total(ix, "sglang:num_running_reqs"),
            "kv_usage": mean(ix, "sglang:token_usage"),
            "preemptions": total(ix, "sglang:num_retracted_requests_total"),
            "cache_hit_rate": mean(ix, "sglang:cache_hit_rate")}


def _tgi(ix: Index, _r: CommonReader) -> Common:
    return {"queued": total(ix, "tgi_queue_size"), "running": total(ix, "tgi_batch_current_size")}


@dataclass(frozen=True)
class _Kind:
    name: str
    marker: str  # a sample name only this kind publishes: its presence names the server
    keep: frozenset[str]
    read: Callable[[Index, CommonReader], Common]


# the first marker present wins: the emulator repeats TensorRT-LLM's names, TensorRT-LLM runs inside Triton
KINDS = (
    _Kind("emulator", "loadgen_emulated_requests", EMULATOR | TRITON_CORE, _emulator),
    _Kind("trtllm", "nv_trt_llm_request_metrics", TRTLLM | TRITON_CORE, _trtllm),
    _Kind("vllm", "vllm:num_requests_running", VLLM, _vllm),
    _Kind("sglang", "sglang:num_running_reqs", SGLANG, _sglang),
    _Kind("tgi", "tgi_queue_size", TGI, _tgi),
    _Kind("triton", "nv_inference_pending_request_count", TRITON_CORE, _triton),
)
