"""The sweep spec: load levels x server configurations, from a TOML scenario file and/or ``loadgen sweep`` flags.

Both sources become one nested mapping (the TOML layout; flags overwrite its keys), validated once by
``spec_from_mapping``, so a scenario file and the equivalent flags give the same sweep. Layout::

    [sweep]     name, description, backend, model, seed, lengths ("sharegpt" or omitted), input_tokens,
                output_tokens, arrival, cv, warmup, request_timeout, http_client, power, power_interval,
                idle_seconds, notes
    [load]      offline = [N, ...] (all N requests at t=0), rates = [...] (req/s), concurrencies = [...],
                requests (per rate/concurrency level), duration
    [stop]      enabled, min_served_ratio, min_achieved_ratio, latency ("e2e_p99<30s"), min_gain
    [analysis]  latency_metric, knee_factor, saturation_gain, slo, eta = [...], latency_factor = [...], ref_batch
    [server]    kind = "embedded" | "external" | "command"
                embedded: profile, gpu, max_batch, replicas, speed (scalars or lists: their cross product)
                external: [[server.endpoints]] label, url, backend, model, metrics_url
                command:  command (with {max_batch} {replicas} {label} ... placeholders), url, backend, model,
                          metrics_url, ready_timeout, ready_path, plus max_batch/replicas lists as for embedded
                [[server.configs]]: explicit configurations instead of the cross product; each may carry its
                own label, speed and load (offline/rates/concurrencies/requests/duration)

Every unknown key is an error naming the file and the table: a typo must not silently run the default.
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from loadgen.errors import UsageError
from loadgen.runner.settings import parse_seconds

LOAD_KINDS = ("offline", "rate", "concurrency")
SERVER_KINDS = ("embedded", "external", "command")
LENGTHS = ("sharegpt",)

_TABLES: dict[str, tuple[str, ...]] = {
    "sweep": ("name", "description", "backend", "model", "seed", "lengths", "input_tokens", "output_tokens",
              "arrival", "cv", "warmup", "request_timeout", "http_client", "power", "power_interval",
              "idle_seconds", "notes"),
    "load": ("offline", "rates", "concurrencies", "requests", "duration"),
    "stop": ("enabled", "min_served_ratio", "min_achieved_ratio", "latency", "min_gain"),
    "analysis": ("latency_metric", "knee_factor", "saturation_gain", "slo", "eta", "latency_factor", "ref_batch"),
    "server": ("kind", "profile", "gpu", "max_batch", "replicas", "speed", "model_name", "endpoints", "command",
               "url", "backend", "model", "metrics_url", "ready_timeout", "ready_path", "configs"),
}
_ENDPOINT_KEYS = ("label", "url", "backend", "model", "metrics_url")
_CONFIG_KEYS = ("label", "profile", "gpu", "max_batch", "replicas", "speed", "url", "backend", "model",
                "metrics_url", "offline", "rates", "concurrencies", "requests", "duration")


# ------------------------------------------------------------------------------------------------ dataclasses
@dataclass(frozen=True)
class LoadLevel:
    """One load level: ``offline`` N requests all at t=0, an open-loop ``rate`` (req/s), or a closed loop of
    ``concurrency`` users. ``requests``/``duration_s`` bound rate and concurrency levels."""

    kind: str
    value: float
    requests: int | None = None
    duration_s: float | None = None

    @property
    def label(self) -> str:
        if self.kind == "offline":
            return f"offline-{int(self.value)}"
        if self.kind == "rate":
            return f"rate-{self.value:g}"
        return f"c{int(self.value)}"

    @property
    def is_open_loop(self) -> bool:
        return self.kind == "rate"


@dataclass(frozen=True)
class Target:
    """One server configuration: how to reach (or start) the server the points of this configuration measure."""

    kind: str
    label: str
    backend: str = "triton-http"
    model: str = "ensemble"
    url: str | None = None
    metrics_url: str | None = None
    profile: str | None = None
    gpu: str | None = None
    max_batch: int | None = None
    replicas: int | None = None
    speed: float = 1.0
    command: str | None = None
    ready_timeout_s: float = 600.0
    ready_path: str | None = None
    loads: tuple[LoadLevel, ...] | None = None  # this configuration's own load levels (else the sweep's)

    @property
    def slug(self) -> str:
        return slug(self.label)

    def params(self) -> dict[str, Any]:
        """The values a restart command can use: {max_batch} {replicas} {profile} {gpu} {label} {speed}."""
        return {"max_batch": self.max_batch, "replicas": self.replicas, "profile": self.profile, "gpu": self.gpu,
                "label": self.label, "speed": self.speed}


@dataclass(frozen=True)
class Workload:
    seed: int = 0
    lengths: str | None = None  # "sharegpt": seeded ShareGPT-like lengths (the study's), else the size forms
    input_tokens: str = "128"
    output_tokens: str = "128"
    arrival: str = "poisson"
    cv: float | None = None
    warmup: str = "0"
    request_timeout_s: float = 1800.0
    http_client: str = "fast"


@dataclass(frozen=True)
class StopRule:
    """When a load series is saturated: later (higher) levels of the same configuration are skipped."""

    enabled: bool = True
    min_served_ratio: float = 0.9  # open loop: completions per second / target rate
    min_achieved_ratio: float = 0.95  # open loop: issued on schedule / scheduled (the client kept up)
    latency: str | None = None  # --fail-on style bound, e.g. "e2e_p99<30s"; past it the series stops
    min_gain: float | None = None  # closed loop: stop when throughput grows by less than this share


@dataclass(frozen=True)
class AnalysisOptions:
    latency_metric: str = "e2e_p99"  # the latency of the Pareto frontier and the knee (a --fail-on name)
    knee_factor: float = 2.0  # knee: largest throughput with latency <= factor x the low-load latency
    saturation_gain: float = 0.05  # saturation: first point after which no level adds more than this share
    slo: str | None = None  # advised configuration: the highest throughput meeting these bounds
    eta: tuple[float, ...] = (0.1, 0.2, 0.3)  # batch-size advice thresholds on eta(B) = T(B) / (B T(1))
    latency_factor: tuple[float, ...] = (3.0, 4.0, 5.0)  # ... and latency within L x the latency at ref_batch
    ref_batch: int = 32


@dataclass
class SweepSpec:
    name: str
    targets: list[Target]
    loads: list[LoadLevel]
    workload: Workload = field(default_factory=Workload)
    stop: StopRule = field(default_factory=StopRule)
    analysis: AnalysisOptions = field(default_factory=AnalysisOptions)
    description: str = ""
    notes: tuple[str, ...] = ()
    power: str = "none"
    power_interval_s: float = 0.1
    idle_s: float = 1.0
    headers: dict[str, str] = field(default_factory=dict)  # never written to disk (API keys)
    source: str = "flags"

    def points(self) -> list[Point]:
        out = []
        for t in self.targets:
            for load in (t.loads if t.loads is not None else self.loads):
                out.append(Point(target=t, load=load))
        ids = [p.id for p in out]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise UsageError(f"{self.source}: two points share the id {dup[0]!r}; give the configurations "
                             "distinct labels")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("headers", None)
        return d


@dataclass(frozen=True)
class Point:
    target: Target
    load: LoadLevel

    @property
    def id(self) -> str:
        return f"{self.target.slug}--{slug(self.load.label)}"

    def definition(self, workload: Workload) -> dict[str, Any]:
        """What a finished point was measured with: a resumed sweep reuses it only when this is unchanged."""
        t = asdict(self.target)
        t.pop("loads", None)
        t.pop("ready_timeout_s", None)
        return {"target": t, "load": asdict(self.load), "workload": asdict(workload)}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


# ------------------------------------------------------------------------------------------------ parsing
def load_toml(path: str | Path) -> dict[str, Any]:
    """The scenario file as a mapping (tomllib on 3.11+, ``tomli`` on 3.10)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - 3.10 only
        try:
            import tomli as tomllib
        except ImportError:
            raise UsageError("--scenario needs Python 3.11+ or `pip install tomli` on Python 3.10") from None
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as err:
        raise UsageError(f"--scenario {path}: cannot read ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"--scenario {path}: not valid TOML ({err})") from None
    return data


def _check_keys(d: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise UsageError(f"{where}: expected a table, got {type(d).__name__}")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; expected some of {', '.join(allowed)}")
    return d


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return list(v)
    if isinstance(v, str) and "," in v:
        return [x.strip() for x in v.split(",") if x.strip()]
    return [v]


def _num(v: Any, where: str, kind: type = float, minimum: float | None = None, strict: bool = True) -> Any:
    try:
        if isinstance(v, bool):
            raise ValueError
        x = kind(v) if kind is float else int(str(v).strip())
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {v!r} is not a{'n integer' if kind is int else ' number'}") from None
    if minimum is not None and (x <= minimum if strict else x < minimum):
        raise UsageError(f"{where}: {v!r} must be {'>' if strict else '>='} {minimum:g}")
    if kind is float and x != x:
        raise UsageError(f"{where}: NaN is not a value")
    return x


def _seconds(v: Any, where: str) -> float | None:
    if v is None:
        return None
    s = parse_seconds(v, where)
    if s <= 0:
        raise UsageError(f"{where}: {v!r} must be a positive duration")
    return s


def parse_loads(d: dict[str, Any], where: str) -> list[LoadLevel]:
    requests = None if d.get("requests") is None else _num(d["requests"], f"{where}.requests", int, 0)
    duration = _seconds(d.get("duration"), f"{where}.duration")
    out: list[LoadLevel] = []
    for n in _as_list(d.get("offline")):
        out.append(LoadLevel("offline", _num(n, f"{where}.offline", int, 0)))
    for key, kind, typ in (("rates", "rate", float), ("concurrencies", "concurrency", int)):
        values = [_num(v, f"{where}.{key}", typ, 0) for v in _as_list(d.get(key))]
        if values and requests is None and duration is None:
            raise UsageError(f"{where}: {key} need requests or duration per level (e.g. requests = 200) so each "
                             "level stops by itself")
        out.extend(LoadLevel(kind, float(v), requests, duration) for v in sorted(values))
    return out


def _embedded_label(t: dict[str, Any], varying: set[str]) -> str:
    """``1x256`` (replicas x max batch), with the profile and GPU when they vary; the speed only when it is all
    that tells two configurations apart."""
    parts = [t[k] for k in ("profile", "gpu") if k in varying]
    parts.append(f"{t['replicas']}x{t['max_batch']}")
    if "speed" in varying:
        parts.append(f"s{t['speed']:g}")
    return " ".join(str(p) for p in parts)


def _server_values(srv: dict[str, Any], key: str, default: Any, typ: type, where: str) -> list[Any]:
    values = _as_list(srv.get(key, default))
    if typ is str:
        return [str(v) for v in values]
    return [_num(v, f"{where}.{key}", typ, 0) for v in values]


def parse_targets(srv: dict[str, Any], sweep: dict[str, Any], where: str) -> list[Target]:
    kind = str(srv.get("kind", "embedded"))
    if kind not in SERVER_KINDS:
        raise UsageError(f"{where}.kind: {kind!r}; choose one of {', '.join(SERVER_KINDS)}")
    backend = str(srv.get("backend") or sweep.get("backend") or "triton-http")
    model = srv.get("model") or sweep.get("model")
    if kind == "external":
        endpoints = srv.get("endpoints") or []
        if not endpoints:
            raise UsageError(f"{where}: kind external needs endpoints (TOML [[server.endpoints]] or --url URL)")
        out = []
        for i, e in enumerate(endpoints):
            e = _check_keys(e, _ENDPOINT_KEYS, f"{where}.endpoints[{i}]")
            if not e.get("url"):
                raise UsageError(f"{where}.endpoints[{i}]: url is required")
            b = str(e.get("backend") or backend)
            m = e.get("model") or model
            if m is None:
                if b.startswith("openai"):
                    raise UsageError(f"{where}.endpoints[{i}]: model is required for OpenAI-compatible servers")
                m = "ensemble"
            out.append(Target("external", str(e.get("label") or e["url"]), b, str(m), str(e["url"]),
                              e.get("metrics_url")))
        return out
    explicit = srv.get("configs")
    if explicit is not None and not isinstance(explicit, list):
        raise UsageError(f"{where}.configs: expected a list of tables ([[server.configs]])")
    defaults = {"profile": "opt-1.3b", "gpu": "h100-64gb", "max_batch": 64, "replicas": 1, "speed": 1.0}
    if explicit:
        rows = []
        for i, c in enumerate(explicit):
            c = _check_keys(c, _CONFIG_KEYS, f"{where}.configs[{i}]")
            rows.append((i, c))
        raw = []
        for i, c in rows:
            w = f"{where}.configs[{i}]"
            t = {k: (c[k] if k in c else srv.get(k, defaults[k])) for k in defaults}
            t = {"profile": str(t["profile"]), "gpu": str(t["gpu"]), "max_batch": _num(t["max_batch"], w, int, 0),
                 "replicas": _num(t["replicas"], w, int, 0), "speed": _num(t["speed"], w, float, 0)}
            loads = parse_loads(c, w) if any(k in c for k in ("offline", "rates", "concurrencies")) else None
            raw.append((t, c.get("label"), loads))
    else:
        grid = {k: _server_values(srv, k, defaults[k], str if k in ("profile", "gpu") else
                                  (float if k == "speed" else int), where) for k in defaults}
        raw = [(dict(zip(defaults, combo, strict=True)), None, None) for combo in itertools.product(*grid.values())]
    varying = {k for k in defaults if len({t[k] for t, _, _ in raw}) > 1}
    if "speed" in varying:
        without = [tuple(t[k] for k in defaults if k != "speed") for t, _, _ in raw]
        if len(set(without)) == len(without):
            varying.discard("speed")
    out = []
    for t, label, loads in raw:
        name = str(label) if label else _embedded_label(t, varying)
        common = dict(label=name, backend=backend, model=str(model or "ensemble"), profile=t["profile"],
                      gpu=t["gpu"], max_batch=t["max_batch"], replicas=t["replicas"], speed=t["speed"], loads=loads)
        if kind == "embedded":
            if backend.startswith("openai"):
                raise UsageError(f"{where}: the embedded server speaks Triton; use backend triton-http or triton-grpc")
            out.append(Target("embedded", **common))
        else:
            if not srv.get("command") or not srv.get("url"):
                raise UsageError(f"{where}: kind command needs command (the restart command) and url")
            if model is None and backend.startswith("openai"):
                raise UsageError(f"{where}: model is required for OpenAI-compatible servers")
            out.append(Target("command", command=str(srv["command"]), url=str(srv["url"]),
                              metrics_url=srv.get("metrics_url"),
                              ready_timeout_s=_seconds(srv.get("ready_timeout", "600s"), f"{where}.ready_timeout")
                              or 600.0, ready_path=srv.get("ready_path"), **common))
    _validate(out, where)
    labels = [t.label for t in out]
    if len(set(labels)) != len(labels):
        out = [replace(t, label=f"{t.label} #{i + 1}") for i, t in enumerate(out)]
    return out


def _validate(targets: list[Target], where: str) -> None:
    """Everything a configuration would fail on later (unknown backend, a profile or a max batch the emulated
    GPU cannot hold) fails now, before the first point runs."""
    from loadgen.runner.backends import BACKENDS
    from loadgen.serve.repository import EmulatedModelSpec

    for t in targets:
        if t.backend not in BACKENDS:
            raise UsageError(f"{where} {t.label}: backend {t.backend!r}; choose one of {', '.join(BACKENDS)}")
        if t.kind == "embedded":
            try:
                EmulatedModelSpec(model_name=t.model, profile=str(t.profile), gpu=str(t.gpu),
                                  max_batch=int(t.max_batch or 0), replicas=int(t.replicas or 0),
                                  speed=t.speed).validate()
            except UsageError as err:
                raise UsageError(f"{where} configuration {t.label}: {err}") from None


def spec_from_mapping(d: dict[str, Any], source: str = "flags") -> SweepSpec:
    """Validate the nested mapping (scenario file + flags) into a ``SweepSpec``."""
    d = _check_keys(d, tuple(_TABLES), source)
    sw = _check_keys(d.get("sweep"), _TABLES["sweep"], f"{source} [sweep]")
    ld = _check_keys(d.get("load"), _TABLES["load"], f"{source} [load]")
    st = _check_keys(d.get("stop"), _TABLES["stop"], f"{source} [stop]")
    an = _check_keys(d.get("analysis"), _TABLES["analysis"], f"{source} [analysis]")
    srv = _check_keys(d.get("server"), _TABLES["server"], f"{source} [server]")
    targets = parse_targets(srv, sw, f"{source} [server]")
    loads = parse_loads(ld, f"{source} [load]")
    if not loads and any(t.loads is None for t in targets):
        raise UsageError(f"{source}: no load levels; give offline = [N], rates = [...] or concurrencies = [...] "
                         "(flags --offline, --rates, --concurrencies)")
    lengths = sw.get("lengths")
    if lengths is not None and lengths not in LENGTHS:
        raise UsageError(f"{source} [sweep].lengths: {lengths!r}; use one of {', '.join(LENGTHS)} or omit it")
    from loadgen.core.sizes import parse_size

    for key in ("input_tokens", "output_tokens"):
        if key in sw:
            parse_size(str(sw[key]), f"{source} [sweep].{key}")
    arrival = str(sw.get("arrival", "poisson"))
    if arrival not in ("poisson", "gamma", "constant"):
        raise UsageError(f"{source} [sweep].arrival: {arrival!r}; use poisson, gamma or constant")
    workload = Workload(seed=_num(sw.get("seed", 0), f"{source} [sweep].seed", int, 0, strict=False),
                        lengths=lengths, input_tokens=str(sw.get("input_tokens", "128")),
                        output_tokens=str(sw.get("output_tokens", "128")), arrival=arrival,
                        cv=None if sw.get("cv") is None else _num(sw["cv"], f"{source} [sweep].cv", float, 0),
                        warmup=str(sw.get("warmup", "0")),
                        request_timeout_s=_seconds(sw.get("request_timeout", "1800s"),
                                                   f"{source} [sweep].request_timeout") or 1800.0,
                        http_client=str(sw.get("http_client", "fast")))
    stop = StopRule(enabled=bool(st.get("enabled", True)),
                    min_served_ratio=_num(st.get("min_served_ratio", 0.9), f"{source} [stop].min_served_ratio"),
                    min_achieved_ratio=_num(st.get("min_achieved_ratio", 0.95),
                                            f"{source} [stop].min_achieved_ratio"),
                    latency=st.get("latency"),
                    min_gain=None if st.get("min_gain") is None else _num(st["min_gain"], f"{source} [stop].min_gain",
                                                                          float, 0, strict=False))
    if stop.latency:
        from loadgen.sweep.analysis import parse_slo_bounds

        parse_slo_bounds(stop.latency, f"{source} [stop].latency (--stop-latency)")
    analysis = AnalysisOptions(
        latency_metric=str(an.get("latency_metric", "e2e_p99")),
        knee_factor=_num(an.get("knee_factor", 2.0), f"{source} [analysis].knee_factor", float, 1, strict=False),
        saturation_gain=_num(an.get("saturation_gain", 0.05), f"{source} [analysis].saturation_gain", float, 0,
                             strict=False),
        slo=an.get("slo"),
        eta=tuple(_num(v, f"{source} [analysis].eta", float, 0) for v in _as_list(an.get("eta", [0.1, 0.2, 0.3]))),
        latency_factor=tuple(_num(v, f"{source} [analysis].latency_factor", float, 0)
                             for v in _as_list(an.get("latency_factor", [3, 4, 5]))),
        ref_batch=_num(an.get("ref_batch", 32), f"{source} [analysis].ref_batch", int, 0))
    from loadgen.sweep.analysis import metric_key

    metric_key(analysis.latency_metric)  # validates the name
    if analysis.slo:
        from loadgen.sweep.analysis import parse_slo_bounds

        parse_slo_bounds(analysis.slo, f"{source} [analysis].slo (--slo)")
    notes = sw.get("notes") or []
    spec = SweepSpec(
        name=str(sw.get("name") or "sweep"), targets=targets, loads=loads, workload=workload, stop=stop,
        analysis=analysis, description=str(sw.get("description") or ""),
        notes=tuple(str(n) for n in (notes if isinstance(notes, list) else [notes])),
        power=str(sw.get("power", "none")),
        power_interval_s=_seconds(sw.get("power_interval", "100ms"), f"{source} [sweep].power_interval") or 0.1,
        idle_s=parse_seconds(sw.get("idle_seconds", 1), f"{source} [sweep].idle_seconds"), source=source)
    spec.points()  # duplicate ids are an error now, not after the first points ran
    return spec


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` (from flags) over ``base`` (the scenario file), table by table."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for table, values in overlay.items():
        if values:
            out.setdefault(table, {}).update(values)
    return out


def spec_from_saved(d: dict[str, Any], source: str) -> SweepSpec:
    """The ``SweepSpec`` written to sweep.json (``SweepSpec.to_dict``), read back."""
    try:
        def load(x: dict[str, Any]) -> LoadLevel:
            return LoadLevel(**x)

        targets = []
        for t in d["targets"]:
            t = dict(t)
            loads = t.pop("loads", None)
            targets.append(Target(**t, loads=None if loads is None else tuple(load(x) for x in loads)))
        an = dict(d.get("analysis") or {})
        for k in ("eta", "latency_factor"):
            if k in an:
                an[k] = tuple(an[k])
        return SweepSpec(name=d["name"], targets=targets, loads=[load(x) for x in d["loads"]],
                         workload=Workload(**d.get("workload") or {}), stop=StopRule(**d.get("stop") or {}),
                         analysis=AnalysisOptions(**an), description=d.get("description", ""),
                         notes=tuple(d.get("notes") or ()), power=d.get("power", "none"),
                         power_interval_s=d.get("power_interval_s", 0.1), idle_s=d.get("idle_s", 1.0),
                         source=source)
    except (KeyError, TypeError) as err:
        raise UsageError(f"{source}: not a sweep.json written by this version of loadgen sweep ({err})") from None
