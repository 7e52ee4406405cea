"""An OS thread for a side task, also inside a gevent-patched process (Locust).

Why: a side task that does blocking HTTP and parsing must not run on the asyncio loop or on the gevent hub. In a
plain process ``threading.Thread`` is an OS thread; under gevent's monkey patching it is a greenlet on the hub, so
there the function goes to the hub's thread pool (real threads; gevent gives each its own hub, so patched sockets
still work there) and sleeps with the original ``time.sleep``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def _gevent_patched() -> bool:
    if "gevent" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("threading"))


def native_sleep() -> Callable[[float], None]:
    """``time.sleep`` that blocks only the calling OS thread (gevent's patched one would need a hub)."""
    if _gevent_patched():
        from gevent.monkey import get_original

        return get_original("time", "sleep")
    return time.sleep


class NativeThread:
    """``start(fn)`` runs ``fn`` in an OS thread; ``join(timeout)`` waits for it (cooperatively under gevent)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._greenlet_result: Any = None

    def start(self, fn: Callable[[], None]) -> None:
        if _gevent_patched():
            import gevent

            self._greenlet_result = gevent.get_hub().threadpool.spawn(fn)
            return
        self._thread = threading.Thread(target=fn, name=self.name, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """True when the thread has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        if self._greenlet_result is not None:  # gevent's AsyncResult: waits on the hub, not blocking it
            self._greenlet_result.wait(timeout)
            return bool(self._greenlet_result.ready())
        return True
