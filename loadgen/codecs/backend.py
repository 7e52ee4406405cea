"""What a driver may rely on in a backend: the one interface, in an asyncio and a blocking (gevent) flavour.

The drivers (the asyncio load loop, the Locust dispatcher and users) only start, probe, send and close; which
protocol, codec and transport sit behind a backend is the registry's business (``loadgen.codecs.registry``). With
the interface written down, a new backend is one codec plus one registration and no driver changes, and a test
double (a fake backend on a fake clock) is checked against the same members as the real ones.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from loadgen.core.records import RequestRecord, RequestSpec


@runtime_checkable
class Backend(Protocol):
    """An asyncio backend (``loadgen run``): a codec on an asyncio transport, aimed at one model of one server."""

    name: str  # the registry name, e.g. "triton-http"
    url: str  # what the transport connects to (an http(s) URL, or HOST:PORT for gRPC)
    model: str  # the model addressed on the server
    info: dict[str, Any]  # what the probe learnt (server kind, model inputs, ...): goes into config.json

    async def start(self) -> None:
        """Open the transport (sessions, channels); nothing is sent yet."""
        ...

    async def close(self) -> None:
        """Release every connection; safe to call after a failed start or probe."""
        ...

    async def probe(self) -> dict[str, Any]:
        """Check the target before the run (one ``TargetError`` line per mistake); returns ``info``."""
        ...

    async def send(self, spec: RequestSpec, rec: RequestRecord, t0: int) -> None:
        """Send one request and settle its outcome into ``rec`` (times relative to ``t0``); never raises for a
        failed request: the record says what went wrong."""
        ...


@runtime_checkable
class BlockingBackend(Protocol):
    """A blocking backend for the Locust front end (gevent: blocking calls yield to the hub)."""

    name: str
    url: str
    model: str
    info: dict[str, Any]

    @property
    def endpoint(self) -> str:
        """The label of this backend's requests in Locust's statistics (a path, or ``ModelStreamInfer/m``)."""
        ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def probe(self) -> dict[str, Any]: ...

    def send(self, spec: RequestSpec, rec: RequestRecord, t0: int) -> None: ...


class BackendState:
    """What every concrete backend holds, asyncio or gevent: its registry entry, its options, and once probed the
    configured codec and the target facts. (The I/O differs per transport; this does not.)"""

    def __init__(self, kind: Any, opts: Any) -> None:
        self.kind = kind
        self.name = kind.name
        self.url = opts.url
        self.model = opts.model
        self.options = opts
        self.codec: Any = None
        self.info: dict[str, Any] = {}

    def adopt(self, facts: Any) -> dict[str, Any]:
        """Take what the probe found: the codec it configures, and the facts for config.json."""
        self.codec = self.kind.codec(self.model, self.options, facts)
        self.info = facts.info
        return self.info
