"""Run a command while another process keeps one core busy: ``python tests/with_busy_core.py -- CMD ...``.

Why: the test suite must hold on a busy 2-core machine (a CI runner shares its cores), and timing tests that only
pass on a quiet machine are a false alarm waiting to happen. The burner is a plain busy loop in its own process,
stopped by its process id when the command ends (and by the kernel if this process dies first: PR_SET_PDEATHSIG).
The exit code is the command's.
"""

from __future__ import annotations

import signal
import subprocess
import sys

BURN = """
import ctypes, signal
try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the runner
except Exception:
    pass
x = 0
while True:
    x += 1
"""


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    if not argv:
        print("usage: python tests/with_busy_core.py -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    burner = subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.DEVNULL)
    print(f"with_busy_core: a busy loop (pid {burner.pid}) keeps one core busy while: {' '.join(argv)}",
          file=sys.stderr, flush=True)
    try:
        return subprocess.call(argv)
    except KeyboardInterrupt:
        return 130
    finally:
        burner.send_signal(signal.SIGKILL)
        burner.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
