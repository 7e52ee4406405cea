"""OpenAI-compatible servers (vLLM, trtllm-serve, SGLang, TGI, Triton's OpenAI front end): streamed
``/v1/chat/completions``; ``--backend openai-completions`` switches to ``/v1/completions``. --model is required:

    locust -f scenarios/ OpenAIChatPoisson --headless -H http://127.0.0.1:9000 --model my-model --rate 4 --requests 200

(The file is not called openai.py: Locust imports locustfiles under their file name, which would shadow the
``openai`` package.) See scenarios/README.md.
"""

from loadgen.locust import plugin
from loadgen.locust.users import ClosedLoopUser, OpenLoopUser, TraceReplayUser

plugin.install()


class OpenAIChatPoisson(OpenLoopUser):
    """Open loop at --rate (Poisson by default); -u does not matter."""

    backend = "openai-chat"


class OpenAIChatTrace(TraceReplayUser):
    """Replays --trace FILE at --speedup or --target-rate."""

    backend = "openai-chat"


class OpenAIChatUsers(ClosedLoopUser):
    """Closed loop: -u N users with --think-time."""

    backend = "openai-chat"
