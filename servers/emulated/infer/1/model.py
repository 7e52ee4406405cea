"""Triton Python-backend model: the one-response sibling of the emulated SLM, for KServe ``/infer``.

KServe v2 ``/infer`` (and unary gRPC ``ModelInfer``) reject decoupled models, and the emulated SLM must be decoupled
to stream. This model is not decoupled and owns no engine: it forwards each request (Python BLS) to the decoupled
model named by the ``target_model`` parameter, which answers a non-streaming request with exactly one response,
and sends that response back as its own. The same engine, emulated GPU, power and telemetry thus serve both
names, so a run through ``/infer`` measures the same emulated hardware as one through ``generate_stream``.

How, checked against the nvidia-pytriton build of Triton 2.51 used here:

* A non-decoupled Python model may still answer through the request's response sender and return None from
  ``execute`` (one response with the final flag per request). That frees ``execute`` at once, so one instance
  serves many requests: each waits for its BLS answer in a worker thread.
* Talking to the server from several threads of one stub at once can lose or misroute messages (the decoupled
  model's notes), so BLS submissions and sends hold one lock; only the waiting happens in parallel.
* ``stream: true`` would make the decoupled model send many responses, which this model cannot pass on: it is
  refused with one clear error instead.
"""

from __future__ import annotations

import json
import os
import queue
import threading

import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
_IPC = threading.Lock()


def _error(message: str, code=None):
    err = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


class _Workers:
    """Daemon threads started on demand up to ``limit`` (a thread per request waiting on the engine); daemon,
    so that a stub whose server died is never kept alive by them."""

    def __init__(self, limit: int) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0
        self.limit = limit

    def submit(self, fn, *args) -> None:
        with self._lock:
            spawn = False
            if self._idle:
                self._idle -= 1  # reserve an idle worker for this item
            elif self._count < self.limit:
                self._count += 1
                spawn = True
        self._q.put((fn, args))
        if spawn:
            threading.Thread(target=self._run, name="loadgen-forward", daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            n = self._count
        for _ in range(n):
            self._q.put(None)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - one broken request must not stop the others
                print(f"[loadgen] forward failed: {exc!r}", flush=True)
            with self._lock:
                self._idle += 1


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        self.name = args["model_name"]
        self.target = params["target_model"]["string_value"]
        self.outputs = [o["name"] for o in config.get("output", [])]
        self.workers = _Workers(int(params.get("max_in_flight", {}).get("string_value") or 1024))
        self._stop = threading.Event()
        threading.Thread(target=self._watch, name="loadgen-watch", daemon=True).start()

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            inputs = {t.name(): t.as_numpy() for t in request.inputs()}
            stream = inputs.get("stream")
            if stream is not None and stream.size and bool(stream.reshape(-1)[0]):
                with _IPC:
                    sender.send(_error(f"{self.name} answers one response per request and cannot stream; stream "
                                       f"from {self.target} (generate_stream or gRPC) instead"), flags=FINAL)
                continue
            params = request.parameters()
            self.workers.submit(self._forward, sender, inputs, json.loads(params) if params else {})
        return None

    def _forward(self, sender, inputs: dict, params: dict) -> None:
        """Run one request on the decoupled model and send its (one) response, or its error, as ours."""
        try:
            tensors = [pb_utils.Tensor(name, arr) for name, arr in inputs.items()]
            req = pb_utils.InferenceRequest(model_name=self.target, inputs=tensors,
                                            requested_output_names=self.outputs, parameters=params)
            with _IPC:
                responses = req.exec(decoupled=True)
            answer = None
            for resp in responses:
                if resp.has_error():
                    err = resp.error()
                    answer = _error(err.message(), err.code())  # its code too: the client sees its status
                    break
                if resp.output_tensors():
                    answer = pb_utils.InferenceResponse(output_tensors=resp.output_tensors())
            if answer is None:
                answer = _error(f"{self.target} sent no response")
        except Exception as exc:  # noqa: BLE001 - the client gets the error, the model stays up
            answer = _error(f"{self.name}: cannot forward to {self.target}: {exc}")
        with _IPC:
            sender.send(answer, flags=FINAL)

    def _watch(self) -> None:
        """Exit if tritonserver went away without unloading us (e.g. SIGKILL): never linger as an orphan."""
        parent = os.getppid()
        while not self._stop.wait(0.5):
            if os.getppid() != parent:
                os._exit(0)

    def finalize(self) -> None:
        self._stop.set()
        self.workers.stop()  # daemons: nothing waits for them
