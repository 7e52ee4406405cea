"""Triton Python-backend model: an emulated small language model with the TensorRT-LLM string interface.

Each model instance (one OS process, a "replica") runs one ``loadgen.emulator.engine.Engine``; all instances share
one emulated GPU through a memory-mapped file (``shared_gpu_path``). ``execute`` only parses and validates a request
and hands it to the engine; the engine's step thread calls back with each step's tokens and this module turns them
into Triton responses (decoupled: one response per engine step when streaming, one at the end otherwise).

Hard-won rules (checked against the nvidia-pytriton build of Triton 2.51 used here):

* Sending (and ``is_cancelled``, and metric updates, which are also messages to the server) from several threads of
  one stub at once loses or misroutes responses. Every such call holds ``_IPC`` (one lock per process), and all
  request traffic goes through one sender thread (``_Outbox``).
* A send is a round trip to the server (about 0.1 ms here) and was most of the engine thread's time at large
  batch; with the outbox the engine only queues responses and keeps its timeline, and sends continue while it
  sleeps through GPU phases.
* ``is_cancelled`` after a request's final response crashes the server, and each call costs about a send: it is
  asked only every ``CANCEL_CHECK_EVERY`` token callbacks of a live request, before its final response, and for
  young requests (fewer than ``YOUNG_CALLS`` token callbacks: queued behind a full batch, in a long prefill, or
  just started) by the telemetry thread, at most ``CANCEL_POLL_PER_TICK`` of them per tick, in turn. Both go
  through the outbox thread, which alone sends final responses, so a check never follows a request's end.
  gRPC tells the server at once when a stream is cancelled, so a request abandoned while queued leaves before it
  takes a slot; over HTTP Triton notices a closed connection only when a write to it fails, so such a request is
  dropped a few tokens after it starts (still well before the next ``CANCEL_CHECK_EVERY`` check).
* Pre-built ``pb_utils.Tensor`` objects can be sent many times: the per-token path builds only the response.

Test hook: request parameter ``"emulate_error_after": k`` sends k tokens, then an error response in place of token
k + 1 (no error when the request ends first), so clients can exercise "error after HTTP 200" against a real server.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections import OrderedDict, deque

import numpy as np
import triton_python_backend_utils as pb_utils

from loadgen.core.prompts import approx_token_count  # the load generator's definition: both sides count alike
from loadgen.emulator.engine import Engine, EngineRequest
from loadgen.emulator.prefix_cache import block_hashes, tokenize
from loadgen.emulator.spread import AdmissionCounts

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
CANCEL_CHECK_EVERY = 32  # responses between two is_cancelled() calls of one request
CANCEL_POLL_PER_TICK = 32  # is_cancelled() calls per telemetry tick for young requests
YOUNG_CALLS = 4  # a request is young (polled for cancellation) until this many token callbacks
BLOCK_TOKENS = 16  # KV block size of the emulated engine (for kv_cache_alloc_new_blocks)
_IPC = threading.Lock()

# Output words: each is one token under approx_token_count (a leading space and a run of word characters).
WORDS = tuple(
    " " + w
    for w in (
        "the of and to in is that it for as with was on be by at this from are or an have not but they which one "
        "you were all we when there can more if no out so said what up its about into than them only time some "
        "could new these two may first then do any like my now over such our man me even most made after also did "
        "many before must through back years where much your way well down should because each just those people"
    ).split()
)
_WORD_BYTES = tuple(w.encode() for w in WORDS)
_WORD_TOKENS = tuple(w.strip() for w in WORDS)  # what tokenize() makes of them when a client sends them back
PERF_OUTPUTS = ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns")


def _param(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value not in ("", None) else default


def _first(tensor):
    """The first element of an input tensor (shape [1, 1] for this model), or None when the input is absent."""
    if tensor is None:
        return None
    arr = tensor.as_numpy()
    return arr.reshape(-1)[0] if arr.size else None


def _error(message: str, code=None):
    err = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


def _i32(name: str, value: int):
    return pb_utils.Tensor(name, np.array([[value]], dtype=np.int32))


def _i64(name: str, value: int):
    return pb_utils.Tensor(name, np.array([[value]], dtype=np.int64))


class _Outbox:
    """The one thread per process that talks to the server about requests (sends and cancellation checks).

    The engine thread only builds responses and queues them here, so the emulated GPU's timeline never waits for
    the server, and sends keep flowing while the engine sleeps through a GPU phase. Items of one request stay in
    order (one FIFO). If the server cannot keep up, ``put`` blocks once ``limit`` items wait (about one step's
    tokens: the telemetry thread keeps it at the running batch): the engine then falls behind, which its step-lag
    metric shows, instead of the queue, and the clients' latency, growing without bound. ``delays_ns`` gets
    how long each item waited (the part of the client-observed latency that is this machine, not the model); the
    telemetry thread drains it.
    """

    def __init__(self, limit: int) -> None:
        self._q: deque = deque()
        self._cv = threading.Condition()
        self.limit = limit
        self._closed = False
        self.delays_ns: deque = deque(maxlen=100_000)
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="loadgen-outbox", daemon=True)
        self._thread.start()

    def put(self, stream, response, flags: int = 0, check: bool = False) -> None:
        item = (stream, response, flags, check, time.monotonic_ns())
        with self._cv:
            while len(self._q) >= self.limit and not self._closed:
                self._cv.wait(0.05)
            self._q.append(item)
            if len(self._q) == 1:
                self._cv.notify_all()

    def check(self, stream) -> None:
        """Queue a cancellation check of a young request (never blocks: the telemetry thread calls it)."""
        with self._cv:
            self._q.append((stream, None, 0, True, time.monotonic_ns()))
            if len(self._q) == 1:
                self._cv.notify_all()

    def depth(self) -> int:
        return len(self._q)

    def close(self, timeout: float = 2.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._closed:
                    self._cv.wait()
                if not self._q:
                    return
                batch = list(self._q)
                self._q.clear()
                self._cv.notify_all()
            for item in batch:
                try:
                    self._deliver(*item)
                except Exception as exc:  # noqa: BLE001 - one broken request must not stop the others
                    print(f"[loadgen] send failed: {exc!r}", flush=True)

    def _deliver(self, stream, response, flags: int, check: bool, queued_ns: int) -> None:
        if stream is None:  # an answer to a request that never reached the engine
            with _IPC:
                response[0].send(response[1], flags=flags)
            return
        if stream.closed:
            return
        if check:
            with _IPC:
                gone = stream.sender.is_cancelled()  # never after the final response: that crashes the server
            if gone:
                stream.client_gone()
                response = _error("request cancelled by the client", pb_utils.TritonError.CANCELLED)
                flags = FINAL
        if response is None:
            return
        with _IPC:
            stream.sender.send(response, flags=flags)
        if flags:
            stream.closed = True
        self.sent += 1
        self.delays_ns.append(time.monotonic_ns() - queued_ns)


class _Stream:
    """One request in flight: turns the engine's token callbacks into Triton responses (queued on the outbox)."""

    __slots__ = ("model", "sender", "req", "stream", "prompt", "word", "generated", "calls", "error_after",
                 "count_in", "count_out", "perf", "done", "closed", "in_tensor")

    def __init__(self, model, sender, prompt: str | None, stream: bool, error_after, count_in: bool,
                 count_out: bool, perf: bool, word: int) -> None:
        self.model = model
        self.sender = sender
        self.prompt = prompt  # kept only when the final text must include it
        self.stream = stream
        self.error_after = error_after
        self.count_in = count_in
        self.count_out = count_out
        self.perf = perf
        self.word = word
        self.generated = 0
        self.calls = 0
        self.done = False  # no more tokens wanted (engine side)
        self.closed = False  # final response sent (outbox side)
        self.req: EngineRequest | None = None
        self.in_tensor = None

    # -- called from the engine thread -------------------------------------------------------------
    def on_tokens(self, req: EngineRequest, n: int, final: bool) -> None:
        if self.done:
            return
        outbox = self.model.outbox
        if self.error_after is not None and self.generated + n > self.error_after:
            n = self.error_after - self.generated
            if n > 0 and self.stream:
                self.generated += n
                outbox.put(self, self._tokens_response(req, n))
            self._fail(req, f"emulated error after {self.error_after} tokens (emulate_error_after)")
            return
        self.generated += n
        self.calls += 1
        check = not final and self.calls % CANCEL_CHECK_EVERY == 0
        if self.stream:
            outbox.put(self, self._tokens_response(req, n), FINAL if final else 0, check)
        elif final:
            outbox.put(self, self._whole_response(req), FINAL)
        elif check:
            outbox.put(self, None, 0, True)
        if final:
            self.done = True

    def on_error(self, req: EngineRequest, message: str) -> None:
        if not self.done:
            self._fail(req, message)

    # -- helpers ------------------------------------------------------------------------------------
    def client_gone(self) -> None:
        """Outbox thread: the client cancelled or disconnected; the engine drops the request at its next step."""
        if self.req is not None:
            self.req.cancelled = True
        if not self.done:
            self.model.cancelled += 1
        self.done = True

    def _fail(self, req: EngineRequest, message: str) -> None:
        req.cancelled = True
        self.done = True
        self.model.outbox.put(self, _error(message), FINAL)

    def _words(self, start: int, n: int) -> str:
        k = len(WORDS)
        return "".join(WORDS[(start + i) % k] for i in range(n))

    def _tokens_response(self, req: EngineRequest, n: int):
        m = self.model
        first = self.word + self.generated - n
        if n == 1:
            tensors = [m.word_tensors[first % len(WORDS)]]
            if self.count_out:
                tensors.append(m.one_tensor)
        else:
            text = self._words(first, n)
            tensors = [pb_utils.Tensor("text_output", np.array([[text.encode()]], dtype=object))]
            if self.count_out:
                tensors.append(_i32("num_output_tokens", n))
        if self.count_in:
            tensors.append(self.in_tensor)
        if self.perf:
            tensors.extend(self._perf_tensors(req))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _whole_response(self, req: EngineRequest):
        text = self._words(self.word, self.generated)
        if self.prompt is not None:
            text = self.prompt + text
        tensors = [pb_utils.Tensor("text_output", np.array([[text.encode()]], dtype=object))]
        if self.count_out:
            tensors.append(_i32("num_output_tokens", self.generated))
        if self.count_in:
            tensors.append(self.in_tensor)
        if self.perf:
            tensors.extend(self._perf_tensors(req))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _perf_tensors(self, req: EngineRequest) -> list:
        bt = self.model.block_tokens
        blocks = -(-(req.input_tokens + self.generated) // bt)
        reused = req.cached_tokens // bt
        return [_i64(name, getattr(req, name)) for name in PERF_OUTPUTS] + [
            _i32("kv_cache_alloc_new_blocks", blocks - reused), _i32("kv_cache_reused_blocks", reused)]


class Telemetry:
    """Custom Prometheus families on Triton's metrics endpoint, updated from a periodic thread.

    ``loadgen_emulated_*`` name the emulator's own figures; ``nv_trt_llm_*`` repeat them under TensorRT-LLM's
    family and label names so scrapers written for a real TensorRT-LLM server work unchanged. Per-replica series
    carry ``instance`` (the Triton model instance); the GPU's power and energy are one series, published by replica
    0 only, because the replicas share one emulated GPU and one energy counter.
    """

    def __init__(self, model: TritonPythonModel) -> None:
        gauge, counter = pb_utils.MetricFamily.GAUGE, pb_utils.MetricFamily.COUNTER
        fams: dict = {}

        def family(name: str, desc: str, kind):
            if name not in fams:
                fams[name] = pb_utils.MetricFamily(name=name, description=desc, kind=kind)
            return fams[name]

        inst = {"model": model.model_name, "version": "1", "instance": model.instance}
        self._gauges: list = []  # (stats key or callable, metric, last value)
        self._counters: list = []
        with _IPC:
            if model.replica_index == 0:
                gpu = {"model": model.model_name, "gpu": model.gpu_name}
                self._gauge(family("loadgen_emulated_gpu_power_watts",
                                   "Emulated GPU board power (W), all replicas together", gauge), gpu, "power_w")
                self._counter(family("loadgen_emulated_gpu_energy_joules_total",
                                     "Emulated GPU energy since the server started (J), monotonic", counter),
                              gpu, "energy_j")
            req = family("loadgen_emulated_requests", "Requests in the replica's engine by state", gauge)
            self._gauge(req, {**inst, "state": "running"}, "running")
            self._gauge(req, {**inst, "state": "waiting"}, "waiting")
            self._gauge(family("loadgen_emulated_kv_cache_usage_ratio", "Share of the replica's KV-cache blocks in "
                               "use (0..1)", gauge), inst, "kv_usage")
            lag = family("loadgen_emulated_step_lag_seconds", "How late the engine thread started its steps "
                         "(emulation timing error), by quantile over recent steps", gauge)
            self._gauge(lag, {**inst, "quantile": "0.5"}, lambda s: s["lag_ms_p50"] / 1e3)
            self._gauge(lag, {**inst, "quantile": "0.99"}, lambda s: s["lag_ms_p99"] / 1e3)
            delay = family("loadgen_emulated_send_delay_seconds", "How long responses waited in the replica's "
                           "outbox before the server took them, over the last second (this machine's share of "
                           "the latency)", gauge)
            self._gauge(delay, {**inst, "quantile": "0.5"}, lambda s: s["send_delay_ms_p50"] / 1e3)
            self._gauge(delay, {**inst, "quantile": "0.99"}, lambda s: s["send_delay_ms_p99"] / 1e3)
            self._gauge(family("loadgen_emulated_outbox_depth", "Responses waiting to be sent", gauge), inst,
                        "outbox_depth")
            cache_desc = {
                "prefix_cache_queries": ("loadgen_emulated_prefix_cache_queries_total", "Prompt tokens looked up "
                                         "in the replica's prefix cache (each admission of a request)"),
                "prefix_cache_hits": ("loadgen_emulated_prefix_cache_hits_total", "Prompt tokens found in the "
                                      "prefix cache (their prefill skipped); hit rate = hits / queries"),
                "prefix_cache_reused_blocks": ("loadgen_emulated_prefix_cache_reused_blocks_total", "KV blocks "
                                               "handed to a request from the prefix cache instead of computed"),
                "requests_cancelled": ("loadgen_emulated_requests_cancelled_total", "Requests whose client "
                                       "cancelled or disconnected before the end (their slot and KV freed)"),
            }
            for key, (name, desc) in cache_desc.items():
                self._counter(family(name, desc, counter), inst, key)
            self._gauge(family("loadgen_emulated_prefix_cache_hit_ratio", "Prefix-cache hit rate of the replica "
                               "since it started: hit tokens / looked-up prompt tokens (0..1)", gauge), inst,
                        lambda s: s["prefix_cache_hits"] / s["prefix_cache_queries"] if s["prefix_cache_queries"]
                        else 0.0)
            self._gauge(family("loadgen_emulated_prefix_cache_blocks", "KV blocks the replica's prefix cache "
                               "holds (in use or evictable)", gauge), inst, "kv_cached_blocks")
            for key, name, desc in (
                ("tokens_generated", "loadgen_emulated_tokens_total", "Output tokens generated by the replica"),
                ("requests_completed", "loadgen_emulated_requests_completed_total", "Requests the replica finished"),
                ("preemptions", "loadgen_emulated_preemptions_total", "KV-cache preemptions (recomputations)"),
                ("steps", "loadgen_emulated_steps_total", "Engine steps (iterations) run by the replica"),
            ):
                self._counter(family(name, desc, counter), inst, key)
            trt = family("nv_trt_llm_request_metrics", "TRT-LLM request metrics (emulated)", gauge)
            for rtype, key in (("active", lambda s: s["running"] + s["waiting"]), ("max", "max_batch"),
                               ("scheduled", "running"), ("context", lambda s: s.get("context", 0)),
                               ("waiting", "waiting")):
                self._gauge(trt, {**inst, "request_type": rtype}, key)
            kv = family("nv_trt_llm_kv_cache_block_metrics", "TRT-LLM KV cache block metrics (emulated)", gauge)
            for btype, key in (("max", "kv_total_blocks"), ("used", "kv_used_blocks"),
                               ("free", lambda s: s["kv_total_blocks"] - s["kv_used_blocks"]),
                               ("tokens_per", lambda s: s.get("kv_block_tokens", BLOCK_TOKENS)),
                               ("reused", "prefix_cache_reused_blocks"), ("fraction", "kv_usage")):
                self._gauge(kv, {**inst, "kv_cache_block_type": btype}, key)
            gen = family("nv_trt_llm_general_metrics", "TRT-LLM general metrics (emulated)", gauge)
            self._gauge(gen, {**inst, "general_type": "iteration_counter"}, "steps")
            self._gauge(gen, {**inst, "general_type": "timestamp"}, lambda s: time.time_ns() // 1000)
        self._families = fams  # keep them alive as long as their metrics

    def _gauge(self, fam, labels: dict, key) -> None:
        self._gauges.append([key, fam.Metric(labels=labels), None])

    def _counter(self, fam, labels: dict, key) -> None:
        self._counters.append([key, fam.Metric(labels=labels), 0.0])

    @staticmethod
    def _value(key, stats: dict) -> float:
        return float(key(stats) if callable(key) else stats[key])

    def update(self, stats: dict) -> None:
        """Set what changed since the last update (each set is a message to the server)."""
        with _IPC:
            for entry in self._gauges:
                value = self._value(entry[0], stats)
                if value != entry[2]:
                    entry[1].set(value)
                    entry[2] = value
            for entry in self._counters:
                value = self._value(entry[0], stats)
                if value > entry[2]:  # counters only go up; a smaller reading is ignored, never subtracted
                    entry[1].increment(value - entry[2])
                    entry[2] = value

    def close(self) -> None:
        self._gauges.clear()
        self._counters.clear()
        self._families.clear()


class TritonPythonModel:
    """One replica: an emulated engine plus the request plumbing and the telemetry thread."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.instance = args["model_instance_name"]
        replicas = int(_param(config, "replicas", "1"))
        try:
            index = int(self.instance.rsplit("_", 1)[-1]) % replicas
        except ValueError:
            index = 0
        self.replica_index = index
        self.profile = _param(config, "emulated_model", "opt-1.3b")
        self.gpu_name = _param(config, "emulated_gpu", "h100-64gb")
        self.max_batch = int(_param(config, "engine_max_batch", "256"))
        shared = _param(config, "shared_gpu_path", "") or None
        self.engine = Engine(
            self.profile, self.gpu_name, self.max_batch, replicas=replicas, replica_index=index,
            speed=float(_param(config, "speed", "1.0")), shared_path=shared,
            gpu_memory_fraction=float(_param(config, "gpu_memory_fraction", "0.9")),
            mps=_param(config, "mps", "on") != "off",
            prefix_cache=_param(config, "prefix_cache", "on") != "off",
            block_tokens=int(_param(config, "kv_block_tokens", str(BLOCK_TOKENS))),
        )
        self.prefix_cache = self.engine.prefix_cache
        self.block_tokens = self.engine.block_tokens
        self.cancelled = 0  # requests whose client went away (counted by the outbox thread)
        self._young: OrderedDict[int, _Stream] = OrderedDict()  # young requests, next to poll first
        self._young_lock = threading.Lock()
        # spread "even": after taking a request, a replica ahead of the others holds its instance busy until they
        # caught up (loadgen/emulator/spread.py); "triton": Triton's own choice of the free instance.
        self.spread = None
        if replicas > 1 and shared and _param(config, "spread", "even") == "even":
            self.spread = AdmissionCounts(replicas, shared + ".spread")
        self.max_len = self.engine.model.max_model_len
        self.word_tensors = [pb_utils.Tensor("text_output", np.array([[w]], dtype=object)) for w in _WORD_BYTES]
        self.one_tensor = _i32("num_output_tokens", 1)
        self._ids = itertools.count()
        self.outbox = _Outbox(limit=32)
        self.engine.start()
        self._stop = threading.Event()
        interval = float(_param(config, "metrics_interval_ms", "100")) / 1000.0
        self.telemetry = Telemetry(self)
        self._thread = threading.Thread(target=self._watch, args=(interval,), name="loadgen-telemetry", daemon=True)
        self._thread.start()
        print(f"[loadgen] {self.instance}: emulated {self.profile} on {self.gpu_name}, replica {index + 1}/"
              f"{replicas}, max batch {self.max_batch}, speed {self.engine.speed:g}, MPS "
              f"{'on' if self.engine.mps else 'off'}, spread {'even' if self.spread else 'triton'}", flush=True)

    # -- requests -------------------------------------------------------------------------------------
    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                stream = self._admit(request, sender)
            except ValueError as exc:
                self.outbox.put(None, (sender, _error(str(exc))), FINAL)
                continue
            self.engine.submit(stream.req)
            with self._young_lock:
                self._young[id(stream)] = stream
            if self.spread is not None:
                self.spread.take(self.replica_index)
        if self.spread is not None:
            self.spread.wait_turn(self.replica_index)
        return None

    def _admit(self, request, sender) -> _Stream:
        """Parse and validate one request; ValueError with the message the client should see."""
        inputs = {t.name(): t for t in request.inputs()}
        text = inputs.get("text_input")
        if text is None:
            raise ValueError("missing input 'text_input': send the prompt as text_input")
        arr = text.as_numpy()
        if arr.size != 1:
            raise ValueError(f"text_input holds {arr.size} prompts: this model takes one prompt per request "
                             "(batch dimension 1); send several requests instead")
        raw = arr.reshape(-1)[0]
        prompt = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        max_tokens = _first(inputs.get("max_tokens"))
        if max_tokens is None:
            raise ValueError("missing input 'max_tokens': ask for at least 1 output token")
        max_tokens = int(max_tokens)
        if max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens} is invalid: ask for at least 1 output token")
        tokens = tokenize(prompt) if self.prefix_cache else None
        n_in = approx_token_count(prompt) if tokens is None else len(tokens)
        if n_in < 1:
            raise ValueError("text_input has no tokens: send a non-empty prompt")
        if n_in + max_tokens > self.max_len:
            raise ValueError(f"prompt of {n_in} tokens + max_tokens {max_tokens} exceeds the {self.max_len}-token "
                             f"max length of {self.profile}: send a shorter prompt or ask for fewer tokens")
        error_after = None
        params = request.parameters()
        if params and params != "{}":
            value = json.loads(params).get("emulate_error_after")
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"emulate_error_after={value!r} is invalid: use a whole number of tokens >= 0")
                error_after = value

        def flag(name: str, default: bool = False) -> bool:
            v = _first(inputs.get(name))
            return default if v is None else bool(v)

        stream = flag("stream")
        keep_prompt = not stream and not flag("exclude_input_in_output")
        rid = next(self._ids)
        st = _Stream(self, sender, prompt if keep_prompt else None, stream, error_after,
                     flag("return_num_input_tokens"), flag("return_num_output_tokens"), flag("return_perf_metrics"),
                     word=rid * 7)
        if st.count_in:
            st.in_tensor = _i32("num_input_tokens", n_in)
        hashes = None
        if tokens is not None:
            # Name the blocks of the prompt and of the answer this request will get (the words are known in
            # advance): a later turn that sends this answer back as history then hits them too, as on a real
            # engine that caches generated blocks.
            k = len(_WORD_TOKENS)
            tokens.extend(_WORD_TOKENS[(st.word + i) % k] for i in range(max_tokens))
            hashes = block_hashes(tokens, self.block_tokens)
        st.req = EngineRequest(request_id=f"{self.instance}-{rid}", input_tokens=n_in, max_tokens=max_tokens,
                               on_tokens=st.on_tokens, on_error=st.on_error, block_hashes=hashes)
        return st

    # -- background -----------------------------------------------------------------------------------
    def _watch(self, interval: float) -> None:
        """Publish telemetry periodically (never per token) and exit if tritonserver went away."""
        parent = os.getppid()
        next_t = time.monotonic()
        window: deque = deque(maxlen=max(1, round(1.0 / interval)))  # send delays of the last second
        source = self.outbox.delays_ns
        while not self._stop.is_set():
            next_t += interval
            try:
                stats = self.engine.stats()
                window.append(np.fromiter((source.popleft() for _ in range(len(source))), dtype=np.int64))
                delays = np.concatenate(window)
                stats["send_delay_ms_p50"] = float(np.percentile(delays, 50)) / 1e6 if delays.size else 0.0
                stats["send_delay_ms_p99"] = float(np.percentile(delays, 99)) / 1e6 if delays.size else 0.0
                stats["outbox_depth"] = self.outbox.depth()
                stats["requests_cancelled"] = self.cancelled
                self._poll_young()
                self.outbox.limit = max(32, stats["running"])
                self.telemetry.update(stats)
            except Exception as exc:  # noqa: BLE001 - telemetry must never take the model down
                print(f"[loadgen] {self.instance}: telemetry update failed: {exc!r}", flush=True)
            if os.getppid() != parent:
                # The server died without unloading us (e.g. SIGKILL): do not linger as an orphan.
                os._exit(0)
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _poll_young(self) -> None:
        """Ask whether the clients of up to CANCEL_POLL_PER_TICK young requests are still there, so a request
        abandoned while queued leaves the engine without waiting for CANCEL_CHECK_EVERY tokens (real engines
        abort it at once)."""
        with self._young_lock:
            table = self._young
            for key in [k for k, st in table.items() if st.calls >= YOUNG_CALLS or st.done]:
                del table[key]
            picked = list(itertools.islice(table.items(), CANCEL_POLL_PER_TICK))
            for key, _ in picked:
                table.move_to_end(key)  # the others get their turn next tick
        for _, st in picked:
            self.outbox.check(st)

    def finalize(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.engine.stop(timeout=2.0)
        self.outbox.close()
        if self.spread is not None:
            self.spread.close()
        self.telemetry.close()
