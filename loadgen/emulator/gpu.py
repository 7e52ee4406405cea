"""One emulated GPU shared by several engine replicas, in one process or across processes.

Each Triton model instance is its own OS process, so replicas meet in a small memory-mapped file (path given
by the host, e.g. under /dev/shm); without a path the state lives in anonymous memory and is private to this
object. The file holds, per replica slot, what that replica is doing now (idle, host phase, GPU phase with its
utilisation and its power intensity), plus one energy counter for the whole GPU.

Sharing rule (the same function drives simulate.py, so calibration and server agree):

* host phases never slow anyone down: they are CPU work, and under NVIDIA MPS one replica's host time overlaps
  another's GPU time;
* a GPU phase progresses at ``1 / stretch`` of its lone speed, where with MPS ``stretch = max(1, sum of the
  utilisations of the phases on the GPU now)`` (kernels from several processes run concurrently and only the
  bandwidth/SM-bound share of each phase competes), and without MPS ``stretch = number of phases on the GPU``
  (time slicing: a context owns the whole GPU, latency-bound parts included).

Energy: every state change (and every read) first adds ``power * elapsed`` since the last update under the
file lock, with ``time.monotonic_ns`` (system-wide on Linux, so all processes agree), then recomputes the
power. The counter therefore never decreases and any replica process can read it.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from loadgen.emulator.power import PowerModel
from loadgen.errors import UsageError

IDLE, HOST, GPU = 0, 1, 2

_MAGIC = 0x534C4D47
_VERSION = 1
# magic, version, slots, mps, energy_j, power_w, last_update_ns
_HEADER = struct.Struct("<IIIIddq")
# state, pid, util, dynamic watts, since_ns
_SLOT = struct.Struct("<IIddq")
_STALE_NS = 1_000_000_000  # a slot busy this long gets its process checked for liveness


def stretch_factor(utilisations: Iterable[float], mps: bool = True) -> float:
    """How much slower than alone a GPU phase runs while these phases (itself included) share the GPU."""
    utils = list(utilisations)
    if not utils:
        return 1.0
    if mps:
        return max(1.0, sum(utils))
    return float(len(utils))


class SharedGpu:
    """Per-slot activity and the energy counter of one emulated GPU; see the module docstring."""

    def __init__(self, slots: int, power: PowerModel, path: str | None = None, mps: bool = True) -> None:
        if slots < 1:
            raise UsageError(f"a shared GPU needs at least 1 replica slot, got {slots}")
        self.slots = int(slots)
        self.power = power
        self.mps = bool(mps)
        self.path = path
        self._size = _HEADER.size + _SLOT.size * self.slots
        self._tlock = threading.Lock()
        self._fd = -1
        self._mm: mmap.mmap | None = None
        if path is None:
            self._mm = mmap.mmap(-1, self._size)
            self._init_header(time.monotonic_ns())
        else:
            self._open_file(path)

    # ------------------------------------------------------------------ setup
    def _open_file(self, path: str) -> None:
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(
                f"cannot open the shared GPU file {path}: {exc.strerror}; give a writable path"
            ) from exc
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(self._fd).st_size
            if 0 < size < _HEADER.size:
                raise UsageError(
                    f"shared GPU file {path} is not an emulator state file: remove it or use another path"
                )
            if size == 0:
                os.ftruncate(self._fd, self._size)
            self._mm = mmap.mmap(self._fd, self._size if size == 0 else size)
            if size == 0:
                self._init_header(time.monotonic_ns())
            else:
                magic, version, slots, mps, *_ = _HEADER.unpack_from(self._mm, 0)
                mismatch = slots != self.slots or bool(mps) != self.mps or size != self._size
                if magic != _MAGIC or version != _VERSION or mismatch:
                    self._mm.close()
                    raise UsageError(
                        f"shared GPU file {path} was made for {slots} replica(s) (mps={bool(mps)}), not "
                        f"{self.slots} (mps={self.mps}): remove it or give each server its own path"
                    )
        except BaseException:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
            raise
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _init_header(self, now_ns: int) -> None:
        _HEADER.pack_into(
            self._mm, 0, _MAGIC, _VERSION, self.slots, int(self.mps), 0.0, self.power.idle_w, now_ns
        )
        for i in range(self.slots):
            _SLOT.pack_into(self._mm, _HEADER.size + i * _SLOT.size, IDLE, 0, 0.0, 0.0, now_ns)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._tlock:
            if self._fd >= 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            else:
                yield

    def close(self) -> None:
        with self._tlock:
            if self._mm is not None and not self._mm.closed:
                self._mm.close()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # ------------------------------------------------------------------ state
    def _slots(self) -> list[tuple[int, int, float, float, int]]:
        """All slots; a slot busy for over a second whose process has died reads (and is reset to) idle."""
        out = []
        now = None
        for i in range(self.slots):
            slot = _SLOT.unpack_from(self._mm, _HEADER.size + i * _SLOT.size)
            if slot[0] != IDLE and slot[1]:
                now = now or time.monotonic_ns()
                if now - slot[4] > _STALE_NS and not _alive(slot[1]):
                    slot = (IDLE, 0, 0.0, 0.0, now)
                    _SLOT.pack_into(self._mm, _HEADER.size + i * _SLOT.size, *slot)
            out.append(slot)
        return out

    def _power_from(self, slots: list[tuple[int, int, float, float, int]]) -> tuple[float, float]:
        on_gpu = [s for s in slots if s[0] == GPU]
        stretch = stretch_factor((s[2] for s in on_gpu), self.mps)
        active = any(s[0] != IDLE for s in slots)
        return self.power.total_w(active, (s[3] for s in on_gpu), stretch), stretch

    def _integrate(self, now_ns: int) -> float:
        magic, version, slots, mps, energy, watts, last_ns = _HEADER.unpack_from(self._mm, 0)
        if now_ns > last_ns:
            energy += watts * (now_ns - last_ns) / 1e9
            _HEADER.pack_into(self._mm, 0, magic, version, slots, mps, energy, watts, now_ns)
        return energy

    def attach(self, slot: int) -> None:
        """Claim a slot for this process; slots left busy by processes that no longer exist are reset."""
        self._check_slot(slot)
        with self._locked():
            now = time.monotonic_ns()
            self._integrate(now)
            for i, (state, pid, _u, _w, _since) in enumerate(self._slots()):
                if i == slot or (state != IDLE and pid and not _alive(pid)):
                    _SLOT.pack_into(
                        self._mm,
                        _HEADER.size + i * _SLOT.size,
                        IDLE,
                        os.getpid() if i == slot else 0,
                        0.0,
                        0.0,
                        now,
                    )
            self._store_power()

    def _store_power(self) -> None:
        watts, _ = self._power_from(self._slots())
        magic, version, slots, mps, energy, _old, last_ns = _HEADER.unpack_from(self._mm, 0)
        _HEADER.pack_into(self._mm, 0, magic, version, slots, mps, energy, watts, last_ns)

    def set_state(self, slot: int, state: int, utilisation: float = 0.0, dynamic_w: float = 0.0) -> int:
        """Record what ``slot`` does from now on; returns the monotonic ns the change took effect."""
        with self._locked():
            now = time.monotonic_ns()
            self._integrate(now)
            _SLOT.pack_into(
                self._mm, _HEADER.size + slot * _SLOT.size, state, os.getpid(), utilisation, dynamic_w, now
            )
            self._store_power()
            return now

    def stretch(self) -> float:
        """Current slowdown of a GPU phase (1.0 when alone)."""
        with self._locked():
            return self._power_from(self._slots())[1]

    def power_w(self) -> float:
        with self._locked():
            return _HEADER.unpack_from(self._mm, 0)[5]

    def energy_j(self) -> float:
        """Joules since the file was created; monotonically non-decreasing across all replicas."""
        with self._locked():
            return self._integrate(time.monotonic_ns())

    def states(self) -> list[int]:
        with self._locked():
            return [s[0] for s in self._slots()]

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.slots:
            raise UsageError(f"replica index {slot} is out of range: use 0 to {self.slots - 1}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
