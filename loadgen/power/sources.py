"""Power sources: what the side-car reads each tick.

Every source has the same small surface, so the side-car loop, its tests and the CPU benchmark treat them alike:

* ``open() -> dict``: connect, pick the GPUs and describe them (written as the ``start`` line of power.jsonl).
  A source that cannot work here raises ``SourceUnavailable`` with one line saying why and what to use instead;
  the run then goes on without energy figures.
* ``read() -> list[dict]``: one sample per GPU, each ``{"gpu": id, "power_w": ..., "energy_j": ..., ...}``;
  fields a GPU does not support are left out (never written as 0). A sample may carry its own ``t_ns`` when the
  source knows better than the tick when the value was taken (nvidia-smi's stream). A failed read raises
  ``SourceError``; the side-car logs it and tries again next tick.
* ``close()``.

``min_interval_s`` is the fastest sampling that makes sense for the source; ``update_s`` how often the source itself
refreshes its values (0: on every read), from which energy.py knows how stale a counter's first sight is on
average; ``settle_s`` how long after the end of a window a new counter value can take to appear (Triton republishes
DCGM values every ``--metrics-interval-ms``, 2 s by default), which the runner waits before it stops the side-car.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from loadgen.errors import UsageError
from loadgen.telemetry.prometheus import parse_samples

SOURCES = ("nvml", "triton", "nvidia-smi", "none")
EMULATED_GPU = "emulated"

# Clock-event ("throttle") reason bits of NVML; the names are ours. GPU idle is not a slowdown worth reporting.
THROTTLE_BITS = {
    0x1: "gpu_idle", 0x2: "applications_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x10: "sync_boost",
    0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake", 0x100: "display_clocks",
}


class SourceUnavailable(Exception):
    """The source cannot start here (no driver, no permission, no GPU at that index, no metrics)."""


class SourceError(Exception):
    """One read failed; the next may work (a scrape timed out, the GPU was busy)."""


def throttle_names(mask: int | None) -> list[str]:
    """Names of the set reason bits, GPU idle left out (it is not a slowdown)."""
    if not mask:
        return []
    return [name for bit, name in THROTTLE_BITS.items() if mask & bit and name != "gpu_idle"]


def parse_gpu_list(text: str | None) -> list[str] | None:
    """'0,1' or 'GPU-ab..,1' -> ['0', '1']; None or '' or 'all' -> None (every GPU the source sees)."""
    if text is None or not text.strip() or text.strip().lower() == "all":
        return None
    items = [t.strip() for t in text.split(",")]
    if any(not t for t in items):
        raise UsageError(f"--power-gpu {text!r}: expected GPU indexes or UUIDs separated by commas, e.g. 0,1")
    return items


# ----------------------------------------------------------------------------------------------------- none
class NoneSource:
    """No power source: the side-car writes its start and stop lines and nothing else."""

    name = "none"
    min_interval_s = 0.01
    update_s = 0.0
    settle_s = 0.0

    def open(self) -> dict[str, Any]:
        return {"gpus": []}

    def read(self) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------------- nvml
class NvmlSource:
    """NVIDIA's management library through ``nvidia-ml-py`` (``import pynvml``); ``lib`` replaces the module in
    tests. Power is ``nvmlDeviceGetPowerUsage`` (mW), energy ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the
    driver loaded; Volta and newer), both converted to W and J."""

    name = "nvml"
    min_interval_s = 0.01
    update_s = 0.0  # read from the driver on each call
    settle_s = 0.05
    COUNTER_MODULUS_J = 2**64 / 1000.0  # an unsigned 64-bit mJ counter

    _OPTIONAL = ("energy_j", "gpu_util", "mem_util", "mem_used_bytes", "sm_clock_mhz", "mem_clock_mhz", "temp_c",
                 "throttle_reasons")

    def __init__(self, gpus: list[str] | None = None, lib: Any = None) -> None:
        self.wanted = gpus
        self.lib = lib
        self.handles: list[tuple[str, Any]] = []
        self.unsupported: dict[str, set[str]] = {}
        self._open = False

    def _explain(self, err: Exception) -> str:
        lib, code = self.lib, getattr(err, "value", None)
        why = {
            getattr(lib, "NVML_ERROR_LIBRARY_NOT_FOUND", -1):
                "libnvidia-ml.so.1 was not found (no NVIDIA driver on this machine?)",
            getattr(lib, "NVML_ERROR_DRIVER_NOT_LOADED", -1): "the NVIDIA driver is not loaded",
            getattr(lib, "NVML_ERROR_NO_PERMISSION", -1): "no permission to query the GPU (run as a user who can)",
        }.get(code, str(err))
        return f"nvml: {why}; use --power triton, nvidia-smi or none"

    def open(self) -> dict[str, Any]:
        if self.lib is None:
            try:
                import pynvml
            except ImportError as err:
                raise SourceUnavailable("nvml: the NVML bindings cannot load (pip install nvidia-ml-py); "
                                        "use --power nvidia-smi, triton or none") from err
            self.lib = pynvml
        lib = self.lib
        try:
            lib.nvmlInit()
        except lib.NVMLError as err:
            raise SourceUnavailable(self._explain(err)) from err
        self._open = True
        try:
            count = lib.nvmlDeviceGetCount()
            wanted = self.wanted if self.wanted is not None else [str(i) for i in range(count)]
            if not wanted:
                raise SourceUnavailable("nvml: the driver reports no GPU on this machine")
            gpus = [self._describe(spec, count) for spec in wanted]
        except BaseException:
            self.close()
            raise
        return {"gpus": gpus}

    def _describe(self, spec: str, count: int) -> dict[str, Any]:
        lib = self.lib
        try:
            if spec.isdigit():
                if int(spec) >= count:
                    raise SourceUnavailable(f"nvml: no GPU at index {spec}: this machine has {count} "
                                            f"(indexes 0-{count - 1}); check --power-gpu")
                handle = lib.nvmlDeviceGetHandleByIndex(int(spec))
            else:
                handle = lib.nvmlDeviceGetHandleByUUID(spec)
            uuid, name = str(lib.nvmlDeviceGetUUID(handle)), str(lib.nvmlDeviceGetName(handle))
        except lib.NVMLError as err:
            if getattr(err, "value", None) in (lib.NVML_ERROR_NOT_FOUND, lib.NVML_ERROR_INVALID_ARGUMENT):
                raise SourceUnavailable(f"nvml: no GPU with UUID or index {spec!r}; check --power-gpu "
                                        "(nvidia-smi -L lists them)") from err
            raise SourceUnavailable(self._explain(err)) from err
        gid = spec if spec.isdigit() else uuid
        self.handles.append((gid, handle))
        self.unsupported[gid] = set()
        info: dict[str, Any] = {"id": gid, "uuid": uuid, "name": name}
        try:
            info["power_limit_w"] = lib.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
        except lib.NVMLError:
            pass
        try:
            lib.nvmlDeviceGetTotalEnergyConsumption(handle)
            info["energy_counter"] = True
            info["counter_modulus_j"] = self.COUNTER_MODULUS_J
        except lib.NVMLError:
            info["energy_counter"] = False
            self.unsupported[gid].add("energy_j")
        return info

    def _optional(self, gid: str, key: str, fn: Any, *args: Any) -> Any:
        if key in self.unsupported[gid]:
            return None
        lib = self.lib
        try:
            return fn(*args)
        except lib.NVMLError as err:
            if getattr(err, "value", None) in (lib.NVML_ERROR_NOT_SUPPORTED, lib.NVML_ERROR_FUNCTION_NOT_FOUND,
                                               lib.NVML_ERROR_NO_PERMISSION):
                self.unsupported[gid].add(key)  # ask once, not every tick
                return None
            raise SourceError(f"nvml: GPU {gid}: {key}: {err}") from err

    def read(self) -> list[dict[str, Any]]:
        lib = self.lib
        out = []
        for gid, h in self.handles:
            try:
                s: dict[str, Any] = {"gpu": gid, "power_w": lib.nvmlDeviceGetPowerUsage(h) / 1000.0}
            except lib.NVMLError as err:
                raise SourceError(f"nvml: GPU {gid}: power: {err}") from err
            mj = self._optional(gid, "energy_j", lib.nvmlDeviceGetTotalEnergyConsumption, h)
            if mj is not None:
                s["energy_j"] = mj / 1000.0
            util = self._optional(gid, "gpu_util", lib.nvmlDeviceGetUtilizationRates, h)
            if util is not None:
                s["gpu_util"], s["mem_util"] = float(util.gpu), float(util.memory)
            mem = self._optional(gid, "mem_used_bytes", lib.nvmlDeviceGetMemoryInfo, h)
            if mem is not None:
                s["mem_used_bytes"] = int(mem.used)
            for key, clock in (("sm_clock_mhz", lib.NVML_CLOCK_SM), ("mem_clock_mhz", lib.NVML_CLOCK_MEM)):
                v = self._optional(gid, key, lib.nvmlDeviceGetClockInfo, h, clock)
                if v is not None:
                    s[key] = int(v)
            temp = self._optional(gid, "temp_c", lib.nvmlDeviceGetTemperature, h, lib.NVML_TEMPERATURE_GPU)
            if temp is not None:
                s["temp_c"] = int(temp)
            reasons_fn = getattr(lib, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
                lib, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
            if reasons_fn is not None:
                mask = self._optional(gid, "throttle_reasons", reasons_fn, h)
                if mask is not None:
                    s["throttle_reasons"] = int(mask)
            out.append(s)
        return out

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                self.lib.nvmlShutdown()
            except self.lib.NVMLError:
                pass


# --------------------------------------------------------------------------------------------------- triton
# Triton's DCGM families (PROTOCOLS.md) -> sample keys, with a scale to our units.
TRITON_GPU = {
    "nv_gpu_power_usage": ("power_w", 1.0),
    "nv_energy_consumption": ("energy_j", 1.0),
    "nv_gpu_utilization": ("gpu_util", 100.0),  # Triton: 0..1; NVML and the report: %
    "nv_gpu_memory_used_bytes": ("mem_used_bytes", 1.0),
    "nv_gpu_memory_total_bytes": ("mem_total_bytes", 1.0),
    "nv_gpu_power_limit": ("power_limit_w", 1.0),
}
# The embedded server's emulated GPU (servers/emulated/ensemble/1/model.py): replica 0 publishes the GPU's power
# gauge and energy counter (one series: the replicas share one GPU), every replica its running/waiting requests;
# all refreshed by a periodic thread every ``metrics_interval_ms`` (100 ms by default).
EMULATED_POWER = "loadgen_emulated_gpu_power_watts"
EMULATED_ENERGY = "loadgen_emulated_gpu_energy_joules_total"
EMULATED_REQUESTS = "loadgen_emulated_requests"  # label state=running|waiting, one series per instance


class TritonSource:
    """Scrapes Triton's Prometheus endpoint (``http://HOST:8002/metrics``) over one kept-alive connection.

    GPUs: DCGM's ``nv_gpu_*`` families labelled by ``gpu_uuid``, and the embedded server's emulated GPU (id
    ``emulated``). By default the emulated GPU alone when the server has one (it is the device doing the work;
    real GPUs beside it are idle bystanders), else every real GPU; ``gpus`` picks by UUID or ``emulated``.
    """

    name = "triton"
    min_interval_s = 0.02

    def __init__(self, url: str, gpus: list[str] | None = None, timeout_s: float = 2.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "") or not parts.hostname:
            raise UsageError(f"--power triton={url}: expected an http URL such as http://127.0.0.1:8002/metrics")
        self.url = url
        self.host, self.port = parts.hostname, parts.port or 8002
        self.path = parts.path if parts.path not in ("", "/") else "/metrics"
        self.wanted = gpus
        self.timeout_s = timeout_s
        self.update_s = 2.0  # Triton's --metrics-interval-ms default for the DCGM families
        self.settle_s = 2.2
        self._conn: http.client.HTTPConnection | None = None
        self._families = set(TRITON_GPU) | {EMULATED_POWER, EMULATED_ENERGY, EMULATED_REQUESTS}
        self.selected: list[str] = []

    def _get(self) -> str:
        for attempt in (0, 1):  # a kept-alive connection the server closed is retried once on a fresh one
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                self._conn.request("GET", self.path)
                resp = self._conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as err:
                self._conn.close()
                self._conn = None
                if attempt:
                    raise SourceError(f"triton: cannot scrape {self.url}: {err}") from err
                continue
            if resp.status != 200:
                raise SourceError(f"triton: {self.url} answered HTTP {resp.status}")
            return body.decode("utf-8", "replace")
        raise AssertionError("unreachable")

    def _by_gpu(self, text: str) -> dict[str, dict[str, Any]]:
        gpus: dict[str, dict[str, Any]] = {}
        emu: dict[str, Any] = {}
        for name, labels, value in parse_samples(text, self._families):
            if name in TRITON_GPU:
                key, scale = TRITON_GPU[name]
                uuid = labels.get("gpu_uuid", "gpu")
                gpus.setdefault(uuid, {"gpu": uuid})[key] = value * scale
            elif name == EMULATED_POWER:
                emu["power_w"] = value
            elif name == EMULATED_ENERGY:
                emu["energy_j"] = value
            elif labels.get("state") in ("running", "waiting"):  # summed over the replicas
                emu[labels["state"]] = emu.get(labels["state"], 0.0) + value
        if "power_w" in emu:
            gpus[EMULATED_GPU] = {"gpu": EMULATED_GPU, **emu}
        return gpus

    def open(self) -> dict[str, Any]:
        try:
            text = self._get()
        except SourceError as err:
            raise SourceUnavailable(f"{err}; start the server, or give --power triton=URL "
                                    "(the metrics port, 8002 by default)") from err
        gpus = self._by_gpu(text)
        powered = {g for g, s in gpus.items() if "power_w" in s}
        if not powered:
            raise SourceUnavailable(
                f"triton: {self.url} publishes no GPU power (nv_gpu_power_usage) nor the embedded server's "
                f"{EMULATED_POWER}: Triton without a GPU (or without DCGM) has none; use --power nvml on the "
                "server machine")
        if self.wanted is not None:
            missing = [g for g in self.wanted if g not in powered]
            if missing:
                raise SourceUnavailable(f"triton: no GPU {', '.join(missing)} at {self.url}; it has "
                                        f"{', '.join(sorted(powered))} (--power-gpu takes these ids)")
            self.selected = list(self.wanted)
        elif EMULATED_GPU in powered:
            self.selected = [EMULATED_GPU]
        else:
            self.selected = sorted(powered)
        if self.selected == [EMULATED_GPU]:
            self.update_s, self.settle_s = 0.1, 0.35  # the emulated families are refreshed every 100 ms
        described = []
        for g in self.selected:
            s = gpus[g]
            info: dict[str, Any] = {"id": g, "uuid": g, "energy_counter": "energy_j" in s,
                                    "name": "emulated GPU (embedded server)" if g == EMULATED_GPU else "GPU"}
            if "power_limit_w" in s:
                info["power_limit_w"] = s["power_limit_w"]
            described.append(info)
        return {"gpus": described, "url": self.url}

    def read(self) -> list[dict[str, Any]]:
        gpus = self._by_gpu(self._get())
        return [gpus[g] for g in self.selected if g in gpus]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# ----------------------------------------------------------------------------------------------- nvidia-smi
SMI_FIELDS = ("index", "uuid", "power.draw", "utilization.gpu", "utilization.memory", "memory.used", "clocks.sm",
              "clocks.mem", "temperature.gpu", "clocks_throttle_reasons.active")
_SMI_KEYS = (None, None, ("power_w", 1.0), ("gpu_util", 1.0), ("mem_util", 1.0), ("mem_used_bytes", 2**20),
             ("sm_clock_mhz", 1.0), ("mem_clock_mhz", 1.0), ("temp_c", 1.0), None)


def _smi_number(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]", "[Unknown Error]"


def parse_smi_line(line: str) -> dict[str, Any] | None:
    """One CSV line of ``SMI_FIELDS`` (noheader, nounits) -> a sample without its time; None when malformed."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != len(SMI_FIELDS) or not parts[0].isdigit():
        return None
    s: dict[str, Any] = {"gpu": parts[0]}
    for text, spec in zip(parts, _SMI_KEYS, strict=True):
        if spec is None:
            continue
        v = _smi_number(text)
        if v is not None:
            key, scale = spec
            s[key] = int(v * scale) if key in ("mem_used_bytes", "sm_clock_mhz", "mem_clock_mhz", "temp_c") \
                else v * scale
    mask = parts[-1]
    if mask.lower().startswith("0x"):
        s["throttle_reasons"] = int(mask, 16)
    return s


class NvidiaSmiSource:
    """Fallback where the NVML bindings cannot load: one long-lived ``nvidia-smi --query-gpu ... -lms N``
    process (a process per sample would cost more CPU than the load generator). A reader thread stamps each line
    on arrival; ``read`` hands over the lines that came since the last call. No energy counter: integral only."""

    name = "nvidia-smi"
    min_interval_s = 0.05
    update_s = 0.0  # each line is stamped on arrival
    settle_s = 0.2

    def __init__(self, gpus: list[str] | None = None, binary: str = "nvidia-smi", interval_s: float = 0.1) -> None:
        self.wanted = gpus
        self.binary = binary
        self.interval_s = max(interval_s, self.min_interval_s)
        self._proc: subprocess.Popen | None = None
        self._lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ids: dict[str, str] = {}

    def _query(self, args: list[str]) -> str:
        path = shutil.which(self.binary)
        if path is None:
            raise SourceUnavailable(f"nvidia-smi: {self.binary!r} is not on PATH (no NVIDIA driver here?); "
                                    "use --power triton or none")
        try:
            done = subprocess.run([path, *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SourceUnavailable(f"nvidia-smi: {err}") from err
        if done.returncode != 0:
            first = (done.stdout.strip() or done.stderr.strip() or f"exit status {done.returncode}").splitlines()[0]
            raise SourceUnavailable(f"nvidia-smi: {first}")
        return done.stdout

    def open(self) -> dict[str, Any]:
        listing = self._query(["--query-gpu=index,uuid,name,power.limit", "--format=csv,noheader,nounits"])
        found: dict[str, dict[str, Any]] = {}
        for line in listing.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 4 and parts[0].isdigit():
                info: dict[str, Any] = {"id": parts[0], "uuid": parts[1], "name": parts[2], "energy_counter": False}
                limit = _smi_number(parts[3])
                if limit is not None:
                    info["power_limit_w"] = limit
                found[parts[0]] = info
        if not found:
            raise SourceUnavailable("nvidia-smi: it lists no GPU")
        by_uuid = {i["uuid"]: k for k, i in found.items()}
        chosen = []
        for spec in self.wanted if self.wanted is not None else sorted(found, key=int):
            key = spec if spec in found else by_uuid.get(spec)
            if key is None:
                raise SourceUnavailable(f"nvidia-smi: no GPU {spec!r}; it lists {', '.join(sorted(found))} "
                                        "(check --power-gpu)")
            chosen.append(key)
            self._ids[key] = spec if spec.isdigit() else found[key]["uuid"]
        cmd = [shutil.which(self.binary) or self.binary, f"--query-gpu={','.join(SMI_FIELDS)}",
               "--format=csv,noheader,nounits", f"-lms={max(1, int(self.interval_s * 1000))}",
               f"--id={','.join(chosen)}"]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._reader, name="nvidia-smi-reader", daemon=True)
        self._thread.start()
        return {"gpus": [{**found[k], "id": self._ids[k]} for k in chosen]}

    def _reader(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            t = time.perf_counter_ns()
            s = parse_smi_line(line)
            if s is not None and s["gpu"] in self._ids:
                s["gpu"] = self._ids[s["gpu"]]
                s["t_ns"] = t
                with self._lock:
                    self._lines.append(s)

    def read(self) -> list[dict[str, Any]]:
        if self._proc is not None and self._proc.poll() is not None:
            raise SourceError(f"nvidia-smi: the sampling process exited with status {self._proc.returncode}")
        with self._lock:
            out, self._lines = self._lines, []
        return out

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=1)


# ---------------------------------------------------------------------------------------------------- factory
def split_spec(spec: str, flag: str = "--power") -> tuple[str, str | None]:
    """'triton=http://h:8002/metrics' -> ('triton', url); 'nvml' -> ('nvml', None); checks the name."""
    name, _, arg = spec.strip().partition("=")
    name = name.strip().lower()
    if name not in SOURCES:
        raise UsageError(f"{flag} {spec!r}: unknown source; choose nvml, triton[=URL], nvidia-smi or none")
    if arg and name != "triton":
        raise UsageError(f"{flag} {spec!r}: only triton takes a URL (triton=http://HOST:8002/metrics)")
    return name, arg or None


def make_source(spec: str, gpus: list[str] | None = None, metrics_url: str | None = None,
                interval_s: float = 0.1, flag: str = "--power") -> Any:
    """The source named by ``spec`` (``nvml``, ``triton[=URL]``, ``nvidia-smi``, ``none``); ``metrics_url`` is
    the Triton metrics URL to use when ``spec`` names none."""
    name, arg = split_spec(spec, flag)
    if name == "nvml":
        return NvmlSource(gpus)
    if name == "nvidia-smi":
        return NvidiaSmiSource(gpus, interval_s=interval_s)
    if name == "triton":
        url = arg or metrics_url
        if not url:
            raise UsageError(f"{flag} triton: give the metrics URL ({flag} triton=http://HOST:8002/metrics); "
                             "it is known by itself only for the embedded server")
        return TritonSource(url, gpus)
    return NoneSource()
