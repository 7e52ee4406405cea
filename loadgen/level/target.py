"""The level's target: the URL given, or the embedded Triton server started for the level (and stopped after)."""

from __future__ import annotations

from typing import Any

from loadgen.scenario.model import Scenario


def start_embedded(sc: Scenario, say: Any = None) -> Any:
    """Start the embedded Triton server hosting the emulated SLM that ``sc.server`` describes."""
    from loadgen.serve.launcher import EmbeddedServer, ServerConfig

    s = sc.server
    cfg = ServerConfig(model_name=sc.target.model or "ensemble", profile=s.model, gpu=s.gpu, replicas=s.replicas,
                       max_batch=s.max_batch, speed=s.speed, mps=s.mps == "on", spread=s.spread,
                       replica_memory=s.replica_memory, prefix_cache=s.prefix_cache == "on",
                       kv_block_tokens=s.kv_block_tokens, http_port=0, grpc_port=0, metrics_port=0)
    server = EmbeddedServer(cfg)
    if say is not None:
        sharing = f", MPS {s.mps}, spread {s.spread}" if s.replicas > 1 else ""
        say(f"starting the embedded Triton server ({s.model} on emulated {s.gpu}, {s.replicas} replica(s), "
            f"max batch {s.max_batch}, speed {s.speed:g}{sharing})...")
    server.start()
    return server


def url_of(server: Any, backend: str) -> str:
    """Where a backend reaches the embedded server: gRPC ``HOST:PORT``, else its HTTP root."""
    return server.grpc_url if backend == "triton-grpc" else server.http_url
