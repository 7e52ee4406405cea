"""Triton Inference Server, HTTP ``generate_stream`` (SSE), e.g. TensorRT-LLM's ensemble or the embedded emulated
SLM. Pick one class:

    locust -f scenarios/ TritonHttpPoisson --headless -H http://127.0.0.1:8000 --rate 8 --requests 400
    locust -f scenarios/ TritonHttpTrace --headless -H http://127.0.0.1:8000 --trace traces/example_bursty.csv
    locust -f scenarios/ TritonHttpUsers --headless -H http://127.0.0.1:8000 -u 8 --think-time 1s -t 60s
    locust -f scenarios/ --headless --scenario level.toml      # the class matching the file (loadgen run's print)

Without -H the embedded Triton server is started for the run. See scenarios/README.md.
"""

from loadgen.locust import plugin
from loadgen.locust.users import ClosedLoopUser, OpenLoopUser, TraceReplayUser

plugin.install()


class TritonHttpPoisson(OpenLoopUser):
    """Open loop at --rate (Poisson by default; --arrival gamma/constant/piecewise:... too); -u does not matter."""

    backend = "triton-http"


class TritonHttpTrace(TraceReplayUser):
    """Replays --trace FILE (Azure, Mooncake, BurstGPT, generic CSV/JSONL) at --speedup or --target-rate."""

    backend = "triton-http"


class TritonHttpUsers(ClosedLoopUser):
    """Closed loop: -u N users, each waiting for its response and --think-time before the next request."""

    backend = "triton-http"
