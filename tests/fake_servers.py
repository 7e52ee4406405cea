"""In-process fake servers, only for what a real Triton server cannot be made to do: a malformed stream, a reset
in the middle of a stream, a hang. Everything else is tested against the real server."""

from __future__ import annotations

import asyncio
import threading

import orjson
from aiohttp import web


class FaultyTriton:
    """Looks like Triton's HTTP endpoint for one model; ``mode`` picks the misbehaviour of generate_stream."""

    def __init__(self, mode: str, tokens: int = 8, gap_s: float = 0.002) -> None:
        self.mode = mode
        self.tokens = tokens
        self.gap_s = gap_s
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.requests = 0

    async def ready(self, _r: web.Request) -> web.Response:
        return web.Response(text="")

    async def meta(self, r: web.Request) -> web.Response:
        if r.match_info["model"] != "m":
            return web.json_response({"error": "unknown model"}, status=400)
        inputs = [{"name": "text_input", "datatype": "BYTES"}, {"name": "max_tokens", "datatype": "INT32"},
                  {"name": "stream", "datatype": "BOOL"}]
        return web.json_response({"name": "m", "versions": ["1"], "inputs": inputs})

    async def generate(self, r: web.Request) -> web.StreamResponse:
        """Modes: ok, http500, http404, empty (200, no event), reset, error_after_200, malformed, hang (after
        one token), stall_after:N (the first N requests served, then every request hangs: a server stopped with
        SIGSTOP), endless (tokens without end, as fast as the socket takes them)."""
        self.requests += 1
        body = orjson.loads(await r.read())
        n = min(int(body["max_tokens"]), self.tokens)
        if self.mode == "http500":
            return web.json_response({"error": "model instance crashed"}, status=500)
        if self.mode == "http404":
            return web.json_response({"error": "Not Found"}, status=404)
        if self.mode.startswith("stall_after:") and self.requests > int(self.mode.split(":")[1]):
            await asyncio.sleep(3600)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(r)
        if self.mode == "empty":
            await resp.write_eof()
            return resp
        if self.mode == "endless":
            chunk = b'data: {"model_name":"m","text_output":" tok"}\n\n' * 256
            while True:
                await resp.write(chunk)
        for k in range(n):
            await asyncio.sleep(self.gap_s)
            if self.mode == "reset" and k == 3:
                assert r.transport is not None
                r.transport.abort()  # a TCP reset in the middle of the body
                return resp
            if self.mode == "error_after_200" and k == 2:
                await resp.write(b'data: {"error": "engine step failed"}\n\n')
                return resp
            if self.mode == "malformed" and k == 2:
                await resp.write(b"data: {this is not json\n\n")
                continue
            if self.mode == "hang" and k == 1:
                await asyncio.sleep(3600)
            await resp.write(b'data: {"model_name":"m","text_output":" tok"}\n\n')
        await resp.write_eof()
        return resp

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/health/ready", self.ready)
        app.router.add_get("/v2/models/{model}", self.meta)
        app.router.add_post("/v2/models/{model}/generate_stream", self.generate)
        return app

    def __enter__(self) -> FaultyTriton:
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            # a hung handler must not hold the shutdown for aiohttp's default 60 s
            self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            pending = asyncio.all_tasks(loop)  # handlers still hung after the short shutdown: end them quietly
            if pending:
                async def end() -> None:
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)

                loop.run_until_complete(end())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert started.wait(10), "fake server did not start"
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
