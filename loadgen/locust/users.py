"""The user classes the scenario files subclass: open loop (Poisson and the other arrival models), trace replay,
and closed loop ("N users with think time").

In the open-loop classes the load does not come from Locust's users: the schedule comes from the core and the
greenlet dispatcher of each worker issues its stripe at the absolute deadlines (``loadgen.locust.dispatch``). Their
users only keep Locust's bookkeeping happy (one is enough: ``-u 1``); ``-u`` does not change the arrival rate.
In the closed-loop classes each Locust user is one client: it sends a request, waits for the whole streamed
response, thinks (``--think-time``, exponential or constant) and sends the next.
"""

from __future__ import annotations

import numpy as np
from locust import User, constant, task

from loadgen.locust.session import session_of


class LLMUser(User):
    """Common base: ``backend`` is the default of ``--backend``; ``mode`` tells the session what to run."""

    abstract = True
    backend = "triton-http"
    mode = "open"


class OpenLoopUser(LLMUser):
    """Open loop: requests at the core's arrival schedule (``--arrival poisson --rate R``); users idle."""

    abstract = True
    mode = "open"
    wait_time = constant(1.0)

    @task
    def idle(self) -> None:
        """Nothing to do: the dispatcher sends the requests (Locust needs a task to schedule)."""


class TraceReplayUser(OpenLoopUser):
    """Open loop replaying a trace (``--trace FILE --speedup S``): the trace's arrivals and lengths."""

    abstract = True
    mode = "trace"


class ClosedLoopUser(LLMUser):
    """Closed loop: each user sends a request, reads the whole stream, thinks, and sends the next."""

    abstract = True
    mode = "closed"

    def on_start(self) -> None:
        session = session_of(self.environment)
        self._user = session.next_user_number()
        self._rng = np.random.Generator(np.random.PCG64([session.seed, self._user]))

    def wait_time(self) -> float:
        session = session_of(self.environment)
        mean = session.think_time_s
        if mean <= 0:
            return 0.0
        if session.think_dist == "constant":
            return mean
        return float(self._rng.exponential(mean))

    @task
    def request(self) -> None:
        session_of(self.environment).closed_loop_request(self._user)
