"""Triton Inference Server, gRPC streaming (decoupled ``ModelStreamInfer``). Give -H as HOST:PORT (the gRPC port,
8001 by default), e.g.

    locust -f scenarios/ TritonGrpcPoisson --headless -H 127.0.0.1:8001 --rate 8 --requests 400

Without -H the embedded Triton server is started for the run. See scenarios/README.md.
"""

from loadgen.locust import plugin
from loadgen.locust.users import ClosedLoopUser, OpenLoopUser, TraceReplayUser

plugin.install()


class TritonGrpcPoisson(OpenLoopUser):
    """Open loop at --rate (Poisson by default); -u does not matter."""

    backend = "triton-grpc"


class TritonGrpcTrace(TraceReplayUser):
    """Replays --trace FILE at --speedup or --target-rate."""

    backend = "triton-grpc"


class TritonGrpcUsers(ClosedLoopUser):
    """Closed loop: -u N users with --think-time."""

    backend = "triton-grpc"
