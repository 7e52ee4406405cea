"""An OpenAI-compatible front end (``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``) for a Triton
server that hosts a TensorRT-LLM-style string model, in the manner of Triton's own OpenAI front end.

It lets the toolkit compare the two protocols against the same engine, and gives the tests a real
OpenAI-compatible server to aim at. Each request becomes one Triton ``generate_stream`` call; each Triton
response becomes one OpenAI chunk. ``stream_options.include_usage`` adds the usage chunk and
``continuous_usage_stats`` puts usage in every chunk (as vLLM does). ``ignore_eos`` and ``min_tokens`` are
accepted (the emulated engine always generates ``max_tokens``).

Reasoning models (chat only), for testing clients against a DeepSeek-R1-style stream as vLLM's reasoning parser
serves it: with ``reasoning_tokens=N`` (the front end's default for every chat request, ``loadgen serve
--openai-reasoning-tokens N``) or the request field ``"reasoning_tokens": N`` (a vendor extension; it wins), the
first N generated tokens go out as ``delta.reasoning_content`` (``reasoning_key``: the newer ``reasoning``
spelling) and the rest as ``delta.content``. ``max_tokens`` bounds both together, as on vLLM; usage counts them in
``completion_tokens`` and separately in ``completion_tokens_details.reasoning_tokens``.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from loadgen.codecs.base import scalar
from loadgen.codecs.sse import SSEDecoder

_DONE = b"data: [DONE]\n\n"
_TOKEN_TEXT = re.compile(r"\s*\S+")  # one emulated output token: a word with its leading space
REASONING_KEYS = ("reasoning_content", "reasoning")


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    body = {"object": "error", "error": {"message": message, "type": kind, "code": status}, "message": message}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _split(text: str, n: int, tokens: int) -> tuple[str, str]:
    """The first ``n`` of a response's ``tokens`` tokens, and the rest (a response holds whole words)."""
    if n <= 0:
        return "", text
    if n >= tokens:
        return text, ""
    words = _TOKEN_TEXT.findall(text)
    return "".join(words[:n]), "".join(words[n:])


class OpenAIFrontend:
    def __init__(self, triton_http_url: str, triton_model: str, served_model_name: str,
                 reasoning_tokens: int = 0, reasoning_key: str = "reasoning_content") -> None:
        if int(reasoning_tokens) != reasoning_tokens or reasoning_tokens < 0:
            from loadgen.errors import UsageError

            raise UsageError(f"--openai-reasoning-tokens {reasoning_tokens!r} is invalid: use 0 (no reasoning) or "
                             "a number of tokens")
        if reasoning_key not in REASONING_KEYS:
            from loadgen.errors import UsageError

            raise UsageError(f"reasoning_key {reasoning_key!r} is invalid: use one of {', '.join(REASONING_KEYS)}")
        self.triton_url = triton_http_url.rstrip("/")
        self.triton_model = triton_model
        self.served_model_name = served_model_name
        self.reasoning_tokens = int(reasoning_tokens)
        self.reasoning_key = reasoning_key
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                              timeout=aiohttp.ClientTimeout(total=None))

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def health(self, _req: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(self, _req: web.Request) -> web.Response:
        data = [{"id": self.served_model_name, "object": "model", "owned_by": "slm-loadgen", "created": 0}]
        return web.json_response({"object": "list", "data": data})

    async def completions(self, req: web.Request) -> web.StreamResponse:
        return await self._handle(req, chat=False)

    async def chat(self, req: web.Request) -> web.StreamResponse:
        return await self._handle(req, chat=True)

    async def _handle(self, req: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = orjson.loads(await req.read())
        except orjson.JSONDecodeError:
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        model = body.get("model")
        if model != self.served_model_name:
            return _error(404, f"The model `{model}` does not exist; this server serves `{self.served_model_name}`",
                          "NotFoundError")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return _error(400, "messages must be a non-empty list")
            prompt = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list):
                prompt = prompt[0] if prompt and isinstance(prompt[0], str) else None
            if not isinstance(prompt, str):
                return _error(400, "prompt must be a string")
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, f"max_tokens must be a positive integer, got {max_tokens!r}")
        reasoning = body.get("reasoning_tokens", self.reasoning_tokens) if chat else 0
        if isinstance(reasoning, bool) or not isinstance(reasoning, int) or reasoning < 0:
            return _error(400, f"reasoning_tokens must be a whole number >= 0, got {reasoning!r}")
        upstream = {"text_input": prompt, "max_tokens": max_tokens, "stream": True,
                    "return_num_input_tokens": True, "return_num_output_tokens": True}
        if body.get("stream"):
            opts = body.get("stream_options") or {}
            return await self._stream(req, upstream, chat, bool(opts.get("include_usage")),
                                      bool(opts.get("continuous_usage_stats")), reasoning)
        return await self._whole(upstream, chat, reasoning)

    @staticmethod
    def _usage(n_in: int, n_out: int, reasoning: int, n_reason: int) -> dict[str, Any]:
        usage: dict[str, Any] = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        if reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": n_reason}
        return usage

    async def _upstream(self, upstream: dict[str, Any]):
        assert self._session is not None
        url = f"{self.triton_url}/v2/models/{self.triton_model}/generate_stream"
        return self._session.post(url, data=orjson.dumps(upstream), headers={"Content-Type": "application/json"})

    def _chunk(self, rid: str, created: int, chat: bool, text: str | None, finish: str | None,
               key: str = "content") -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {} if text is None else {key: text}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish}
            obj = "text_completion"
        return {"id": rid, "object": obj, "created": created, "model": self.served_model_name, "choices": [choice]}

    async def _stream(self, req: web.Request, upstream: dict[str, Any], chat: bool, include_usage: bool,
                      continuous: bool, reasoning: int = 0) -> web.StreamResponse:
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        ctx = await self._upstream(upstream)
        try:
            resp = await ctx.__aenter__()
        except (aiohttp.ClientError, OSError) as err:
            return _error(503, f"the Triton server is unreachable: {err}", "ServiceUnavailable")
        try:
            if resp.status != 200:
                text = await resp.text()
                return _error(resp.status if resp.status < 500 else 500, f"Triton: {text[:300]}")
            out = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await out.prepare(req)
            if chat:
                first = self._chunk(rid, created, True, None, None)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                await out.write(b"data: " + orjson.dumps(first) + b"\n\n")
            sse = SSEDecoder()
            n_in = n_out = n_reason = 0
            async for data in resp.content.iter_any():
                for payload in sse.feed(data):
                    ev = orjson.loads(payload)
                    if "error" in ev:
                        err = {"object": "error", "message": str(ev["error"]), "code": 500,
                               "error": {"message": str(ev["error"]), "type": "InternalServerError", "code": 500}}
                        await out.write(b"data: " + orjson.dumps(err) + b"\n\n")
                        await out.write_eof()
                        return out
                    n_in = int(scalar(ev.get("num_input_tokens")) or n_in)
                    n = int(scalar(ev.get("num_output_tokens")) or 0)
                    text = str(scalar(ev.get("text_output")) or "")
                    think, answer = _split(text, reasoning - n_reason, n) if reasoning else ("", text)
                    parts = [(self.reasoning_key, think)] if think else []
                    if answer or not think:
                        parts.append(("content", answer))
                    n_reason += min(n, max(0, reasoning - n_reason))
                    n_out += n
                    for i, (key, piece) in enumerate(parts):
                        chunk = self._chunk(rid, created, chat, piece, None, key)
                        if continuous and i == len(parts) - 1:
                            chunk["usage"] = self._usage(n_in, n_out, reasoning, n_reason)
                        await out.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            last = self._chunk(rid, created, chat, None if chat else "", "length")
            await out.write(b"data: " + orjson.dumps(last) + b"\n\n")
            if include_usage:
                usage = {"id": rid, "object": last["object"], "created": created, "model": self.served_model_name,
                         "choices": [], "usage": self._usage(n_in, n_out, reasoning, n_reason)}
                await out.write(b"data: " + orjson.dumps(usage) + b"\n\n")
            await out.write(_DONE)
            await out.write_eof()
            return out
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        finally:
            await ctx.__aexit__(None, None, None)

    async def _whole(self, upstream: dict[str, Any], chat: bool, reasoning: int = 0) -> web.Response:
        try:
            async with await self._upstream(upstream) as resp:
                if resp.status != 200:
                    return _error(resp.status if resp.status < 500 else 500, f"Triton: {(await resp.text())[:300]}")
                sse = SSEDecoder()
                texts: list[str] = []
                n_in = n_out = 0
                async for data in resp.content.iter_any():
                    for payload in sse.feed(data):
                        ev = orjson.loads(payload)
                        if "error" in ev:
                            return _error(500, str(ev["error"]), "InternalServerError")
                        texts.append(str(scalar(ev.get("text_output")) or ""))
                        n_in = int(scalar(ev.get("num_input_tokens")) or n_in)
                        n_out += int(scalar(ev.get("num_output_tokens")) or 0)
        except (aiohttp.ClientError, OSError) as err:
            return _error(503, f"the Triton server is unreachable: {err}", "ServiceUnavailable")
        text = "".join(texts)
        n_reason = min(reasoning, n_out)
        think, text = _split(text, n_reason, n_out)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if reasoning:
            message[self.reasoning_key] = think
        choice: dict[str, Any] = ({"index": 0, "message": message, "finish_reason": "length"} if chat else
                                  {"index": 0, "text": text, "finish_reason": "length"})
        return web.json_response({
            "id": uuid.uuid4().hex, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": self.served_model_name, "choices": [choice],
            "usage": self._usage(n_in, n_out, reasoning, n_reason)})


class FrontendThread:
    """Runs an ``OpenAIFrontend`` on its own event loop in a daemon thread (``loadgen serve --openai-port``,
    and tests that need a real OpenAI-compatible server beside the embedded Triton)."""

    def __init__(self, triton_http_url: str, triton_model: str, served_model_name: str,
                 host: str = "127.0.0.1", port: int = 0, reasoning_tokens: int = 0,
                 reasoning_key: str = "reasoning_content") -> None:
        self.frontend = OpenAIFrontend(triton_http_url, triton_model, served_model_name, reasoning_tokens,
                                       reasoning_key)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> FrontendThread:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self.port = loop.run_until_complete(self.frontend.start(self.host, self.port))
            except BaseException as err:  # noqa: BLE001 - reported to the starting thread
                failure.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.frontend.stop())
            loop.close()

        self._thread = threading.Thread(target=serve, name="openai-frontend", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise RuntimeError("the OpenAI front end did not start in time")
        if failure:
            err = failure[0]
            if isinstance(err, OSError) and err.errno == 98:
                from loadgen.errors import UsageError

                raise UsageError(f"--openai-port {self.port} is in use; pick another port or 0 for a free one")
            raise err
        return self

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
