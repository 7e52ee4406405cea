"""The sweep spec: load levels x server configurations, from a TOML scenario file and/or ``loadgen sweep`` flags.

A sweep file is a scenario file (``loadgen.scenario``: the level tables ``[target] [load] [workload] [trace]
[limits] [results] [power] [server]``, exactly as ``loadgen run --print-scenario`` writes them) plus the sweep's
own tables. Flags overwrite the file's keys, so a file and the equivalent flags give the same sweep. Layout::

    level tables  the base of every point; [server] model, gpu, max_batch, replicas, speed, mps may be lists (their
                  cross product is the configurations); [load] requests / duration bound each rate or
                  concurrency level; without a grid the level's own rate or concurrency is the one point
    [sweep]       name, description, notes, offline = [N, ...] (all N requests at t=0), rates = [...] (req/s),
                  concurrencies = [...], kind = "embedded" | "external" | "command",
                  external: [[sweep.endpoints]] label, url, backend, model, metrics_url (or [target] url alone)
                  command:  command (with {max_batch} {replicas} {label} ... placeholders), metrics_url,
                            ready_timeout, ready_path; the server listens at [target] url
                  [[sweep.configs]]: explicit configurations instead of the cross product; each may carry its
                  own label, server settings (model, gpu, max_batch, replicas, speed, mps) and load
                  (offline, rates, concurrencies, requests, duration)
    [stop]        enabled, min_served_ratio, min_achieved_ratio, latency ("e2e_p99<30s"), min_gain
    [analysis]    latency_metric, knee_factor, saturation_gain, slo, eta = [...], latency_factor = [...], ref_batch

Every unknown key is an error naming the file and the table: a typo must not silently run the default.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from loadgen.core.units import parse_seconds
from loadgen.errors import UsageError
from loadgen.scenario.model import Scenario

LOAD_KINDS = ("offline", "rate", "concurrency")
SERVER_KINDS = ("embedded", "external", "command")
LENGTHS = ("sharegpt",)

SWEEP_TABLES: dict[str, tuple[str, ...]] = {
    "sweep": ("name", "description", "notes", "offline", "rates", "concurrencies", "kind", "endpoints", "command",
              "metrics_url", "ready_timeout", "ready_path", "configs"),
    "stop": ("enabled", "min_served_ratio", "min_achieved_ratio", "latency", "min_gain"),
    "analysis": ("latency_metric", "knee_factor", "saturation_gain", "slo", "eta", "latency_factor", "ref_batch"),
}
SERVER_GRID = ("model", "gpu", "max_batch", "replicas", "speed", "mps")  # [server] keys that may be lists
_ENDPOINT_KEYS = ("label", "url", "backend", "model", "metrics_url")
_CONFIG_KEYS = ("label", *SERVER_GRID, "offline", "rates", "concurrencies", "requests", "duration")


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
    mps: str = "on"  # replicas share the (emulated) GPU under MPS ("on") or by time slicing ("off")
    spread: str = "even"  # embedded: requests over replicas, round robin ("even") or Triton's choice ("triton")
    replica_memory: float | None = None  # embedded: share of the memory budget per replica (None: 1/replicas)
    prefix_cache: str = "off"  # embedded: the engines' prefix cache (--server-prefix-cache)
    kv_block_tokens: int = 16  # embedded: KV block size (--server-kv-block-tokens)
    command: str | None = None
    ready_timeout_s: float = 600.0
    ready_path: str | None = None
    loads: tuple[LoadLevel, ...] | None = None  # this configuration's own load levels (else the sweep's)

    @property
    def slug(self) -> str:
        return slug(self.label)

    def params(self) -> dict[str, Any]:
        """The values a restart command can use: {max_batch} {replicas} {profile} {gpu} {label} {speed} {mps}."""
        return {"max_batch": self.max_batch, "replicas": self.replicas, "profile": self.profile, "gpu": self.gpu,
                "label": self.label, "speed": self.speed, "mps": self.mps}


def workload_facts(base: Scenario) -> dict[str, Any]:
    """What every point's requests are made of: a resumed sweep reuses a point only when this is unchanged."""
    return {"seed": base.load.seed, "lengths": base.workload.lengths, "input_tokens": base.workload.input_tokens,
            "output_tokens": base.workload.output_tokens, "arrival": base.load.arrival, "cv": base.load.cv,
            "warmup": base.load.warmup, "request_timeout_s": base.limits.request_timeout,
            "http_client": base.target.http_client}


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
    base: Scenario = field(default_factory=Scenario)  # every point's scenario, before its load and server
    stop: StopRule = field(default_factory=StopRule)
    analysis: AnalysisOptions = field(default_factory=AnalysisOptions)
    description: str = ""
    notes: tuple[str, ...] = ()
    source: str = "flags"

    @property
    def workload(self) -> dict[str, Any]:
        return workload_facts(self.base)

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
        """What sweep.json keeps (never a secret: the base scenario as config.json writes it)."""
        from loadgen.scenario.load import public_dict

        d = {f: getattr(self, f) for f in ("name", "targets", "loads", "stop", "analysis", "description", "notes",
                                            "source")}
        d = {k: [asdict(x) for x in v] if k in ("targets", "loads") else asdict(v)
             if k in ("stop", "analysis") else v for k, v in d.items()}
        d["scenario"] = public_dict(self.base)
        return d


@dataclass(frozen=True)
class Point:
    target: Target
    load: LoadLevel

    @property
    def id(self) -> str:
        return f"{self.target.slug}--{slug(self.load.label)}"

    def definition(self, workload: dict[str, Any]) -> dict[str, Any]:
        """What a finished point was measured with: a resumed sweep reuses it only when this is unchanged."""
        t = asdict(self.target)
        t.pop("loads", None)
        t.pop("ready_timeout_s", None)
        return {"target": t, "load": asdict(self.load), "workload": dict(workload)}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


# ------------------------------------------------------------------------------------------------ parsing
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


def parse_loads(d: dict[str, Any], where: str, requests: int | None, duration: float | None) -> list[LoadLevel]:
    """``offline``, ``rates`` and ``concurrencies`` lists; ``requests``/``duration`` bound each rate or
    concurrency level (a configuration's own values replace the base's)."""
    if d.get("requests") is not None:
        requests = _num(d["requests"], f"{where}.requests", int, 0)
    if d.get("duration") is not None:
        duration = _seconds(d["duration"], f"{where}.duration")
    out: list[LoadLevel] = []
    for n in _as_list(d.get("offline")):
        out.append(LoadLevel("offline", _num(n, f"{where}.offline", int, 0)))
    for key, kind, typ in (("rates", "rate", float), ("concurrencies", "concurrency", int)):
        values = [_num(v, f"{where}.{key}", typ, 0) for v in _as_list(d.get(key))]
        if values and requests is None and duration is None:
            raise UsageError(f"{where}: {key} need requests or duration per level (--requests N or --duration D; "
                             "[load] requests = 200) so each level stops by itself")
        out.extend(LoadLevel(kind, float(v), requests, duration) for v in sorted(values))
    return out


def _base_load(base: Scenario) -> list[LoadLevel]:
    """A file without a grid is a one-point sweep: the level's own rate or concurrency."""
    ld = base.load
    if ld.rate is not None:
        return [LoadLevel("rate", float(ld.rate), ld.requests, ld.duration)]
    if ld.concurrency is not None:
        return [LoadLevel("concurrency", float(ld.concurrency), ld.requests, ld.duration)]
    return []


def _embedded_label(t: dict[str, Any], varying: set[str]) -> str:
    """``1x256`` (replicas x max batch), with the model and GPU when they vary; the speed only when it is all
    that tells two configurations apart."""
    parts = [t[k] for k in ("model", "gpu") if k in varying]
    parts.append(f"{t['replicas']}x{t['max_batch']}")
    if "mps" in varying and t["replicas"] > 1:
        parts.append("MPS" if t["mps"] == "on" else "no-MPS")
    if "speed" in varying:
        parts.append(f"s{t['speed']:g}")
    return " ".join(str(p) for p in parts)


_SERVER_TYPES: dict[str, type] = {"model": str, "gpu": str, "max_batch": int, "replicas": int, "speed": float,
                                  "mps": bool}


def split_server_grid(server: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The ``[server]`` table without its list values (the base's), and those lists (the grid's axes);
    ``--server-max-batch 16,64`` arrives as text with a comma."""
    scalars, axes = {}, {}
    for key, value in (server or {}).items():
        listed = isinstance(value, (list, tuple)) or (isinstance(value, str) and "," in value
                                                     and key in SERVER_GRID)
        if key in SERVER_GRID and listed:
            axes[key] = _as_list(value)
        else:
            scalars[key] = value
    return scalars, axes


def _server_rows(base: Scenario, axes: dict[str, list[Any]], configs: Any, loads_base: tuple[int | None,
                 float | None], where: str) -> list[tuple[dict[str, Any], Any, tuple[LoadLevel, ...] | None]]:
    """(server settings, label, own loads) of each configuration: the explicit configs, or the cross product."""
    defaults = base.server.model_dump()
    if configs:
        if not isinstance(configs, list):
            raise UsageError(f"{where}.configs: expected a list of tables ([[sweep.configs]])")
        rows = []
        for i, c in enumerate(configs):
            w = f"{where}.configs[{i}]"
            c = _check_keys(c, _CONFIG_KEYS, w)
            t = {k: _typed(c.get(k, defaults[k]), k, w) for k in SERVER_GRID}
            own = any(k in c for k in ("offline", "rates", "concurrencies"))
            loads = tuple(parse_loads(c, w, *loads_base)) if own else None
            rows.append((t, c.get("label"), loads))
        return rows
    grid = {k: [_typed(v, k, f"{where} [server].{k}") for v in axes.get(k, [defaults[k]])] for k in SERVER_GRID}
    return [(dict(zip(SERVER_GRID, combo, strict=True)), None, None) for combo in itertools.product(*grid.values())]


def _typed(v: Any, key: str, where: str) -> Any:
    typ = _SERVER_TYPES[key]
    if typ is bool:
        text = ("on" if v else "off") if isinstance(v, bool) else str(v).strip().lower()
        if text not in ("on", "off"):
            raise UsageError(f"{where}.{key if '.' not in where else ''}: {v!r}; use on or off (true or false)"
                             .replace(".:", ":"))
        return text
    return str(v) if typ is str else _num(v, f"{where}.{key}" if "." not in where else where, typ, 0)


def parse_targets(sw: dict[str, Any], axes: dict[str, list[Any]], base: Scenario, where: str) -> list[Target]:
    backend, model, url = base.target.backend, base.target.model, base.target.url
    kind = str(sw.get("kind") or ("command" if sw.get("command") else "external" if (sw.get("endpoints") or url)
                                  else "embedded"))
    if kind not in SERVER_KINDS:
        raise UsageError(f"{where}.kind: {kind!r}; choose one of {', '.join(SERVER_KINDS)}")
    if kind == "external":
        return _external_targets(sw, backend, model, url, where)
    rows = _server_rows(base, axes, sw.get("configs"), (base.load.requests, base.load.duration), where)
    varying = {k for k in SERVER_GRID if len({t[k] for t, _, _ in rows}) > 1}
    if "speed" in varying:
        without = [tuple(t[k] for k in SERVER_GRID if k != "speed") for t, _, _ in rows]
        if len(set(without)) == len(without):
            varying.discard("speed")
    out = []
    for t, label, loads in rows:
        common = dict(label=str(label) if label else _embedded_label(t, varying), backend=backend,
                      model=str(model or "ensemble"), profile=t["model"], gpu=t["gpu"], max_batch=t["max_batch"],
                      replicas=t["replicas"], speed=t["speed"], mps=t["mps"], spread=base.server.spread,
                      replica_memory=base.server.replica_memory, prefix_cache=base.server.prefix_cache,
                      kv_block_tokens=base.server.kv_block_tokens, loads=loads)
        if kind == "embedded":
            if backend.startswith("openai"):
                raise UsageError(f"{where}: the embedded server speaks Triton; use backend triton-http or triton-grpc")
            out.append(Target("embedded", **common))
        else:
            if not sw.get("command") or not url:
                raise UsageError(f"{where}: kind command needs command (the restart command) and [target] url "
                                 "(--url)")
            if model is None and backend.startswith("openai"):
                raise UsageError(f"{where}: model is required for OpenAI-compatible servers")
            out.append(Target("command", command=str(sw["command"]), url=str(url), metrics_url=sw.get("metrics_url"),
                              ready_timeout_s=_seconds(sw.get("ready_timeout", "600s"), f"{where}.ready_timeout")
                              or 600.0, ready_path=sw.get("ready_path"), **common))
    _validate(out, where)
    labels = [t.label for t in out]
    if len(set(labels)) != len(labels):
        out = [replace(t, label=f"{t.label} #{i + 1}") for i, t in enumerate(out)]
    return out


def _external_targets(sw: dict[str, Any], backend: str, model: str | None, url: str | None,
                      where: str) -> list[Target]:
    endpoints = sw.get("endpoints") or ([{"url": url}] if url else [])
    if not endpoints:
        raise UsageError(f"{where}: kind external needs endpoints ([[sweep.endpoints]] or --url URL)")
    out = []
    for i, e in enumerate(endpoints):
        e = _check_keys(e, _ENDPOINT_KEYS, f"{where}.endpoints[{i}]")
        if not e.get("url"):
            raise UsageError(f"{where}.endpoints[{i}]: url is required")
        b = str(e.get("backend") or backend)
        m = e.get("model") or model
        if m is None or (m == "ensemble" and b.startswith("openai") and not e.get("model")):
            if b.startswith("openai"):
                raise UsageError(f"{where}.endpoints[{i}]: model is required for OpenAI-compatible servers")
            m = "ensemble"
        out.append(Target("external", str(e.get("label") or e["url"]), b, str(m), str(e["url"]),
                          e.get("metrics_url") or sw.get("metrics_url")))
    _validate(out, where)
    return out


def _validate(targets: list[Target], where: str) -> None:
    """Everything a configuration would fail on later (unknown backend, a profile or a max batch the emulated
    GPU cannot hold) fails now, before the first point runs."""
    from loadgen.codecs.registry import BACKENDS
    from loadgen.serve.repository import EmulatedModelSpec

    for t in targets:
        if t.backend not in BACKENDS:
            raise UsageError(f"{where} {t.label}: backend {t.backend!r}; choose one of {', '.join(BACKENDS)}")
        if t.kind == "embedded":
            try:
                EmulatedModelSpec(model_name=t.model, profile=str(t.profile), gpu=str(t.gpu),
                                  max_batch=int(t.max_batch or 0), replicas=int(t.replicas or 0),
                                  speed=t.speed, mps=t.mps == "on", spread=t.spread,
                                  replica_memory=t.replica_memory).validate()
            except UsageError as err:
                raise UsageError(f"{where} configuration {t.label}: {err}") from None


def _stop_rule(st: dict[str, Any], where: str) -> StopRule:
    stop = StopRule(enabled=bool(st.get("enabled", True)),
                    min_served_ratio=_num(st.get("min_served_ratio", 0.9), f"{where}.min_served_ratio"),
                    min_achieved_ratio=_num(st.get("min_achieved_ratio", 0.95), f"{where}.min_achieved_ratio"),
                    latency=st.get("latency"),
                    min_gain=None if st.get("min_gain") is None else _num(st["min_gain"], f"{where}.min_gain",
                                                                          float, 0, strict=False))
    if stop.latency:
        from loadgen.sweep.analysis import parse_slo_bounds

        parse_slo_bounds(stop.latency, f"{where}.latency (--stop-latency)")
    return stop


def _analysis(an: dict[str, Any], where: str) -> AnalysisOptions:
    analysis = AnalysisOptions(
        latency_metric=str(an.get("latency_metric", "e2e_p99")),
        knee_factor=_num(an.get("knee_factor", 2.0), f"{where}.knee_factor", float, 1, strict=False),
        saturation_gain=_num(an.get("saturation_gain", 0.05), f"{where}.saturation_gain", float, 0, strict=False),
        slo=an.get("slo"),
        eta=tuple(_num(v, f"{where}.eta", float, 0) for v in _as_list(an.get("eta", [0.1, 0.2, 0.3]))),
        latency_factor=tuple(_num(v, f"{where}.latency_factor", float, 0)
                             for v in _as_list(an.get("latency_factor", [3, 4, 5]))),
        ref_batch=_num(an.get("ref_batch", 32), f"{where}.ref_batch", int, 0))
    from loadgen.sweep.analysis import metric_key, parse_slo_bounds

    metric_key(analysis.latency_metric)  # validates the name
    if analysis.slo:
        parse_slo_bounds(analysis.slo, f"{where}.slo (--advise-slo)")
    return analysis


def base_scenario(d: dict[str, Any], source: str, check_paths: bool = False) -> tuple[Scenario, dict[str, list]]:
    """The scenario every point starts from, and the ``[server]`` grid axes taken out of it."""
    from loadgen.scenario.check import build, resolve
    from loadgen.scenario.load import level_tables

    tables = level_tables(d)
    server, axes = split_server_grid(tables.get("server") or {})
    tables = {**tables, "server": server}
    base = build(tables, source)
    if base.target.url is not None and base.target.backend != "triton-grpc" and "://" not in base.target.url:
        raise UsageError(f"--url {base.target.url}: expected http(s)://HOST:PORT")
    return resolve(base, check_paths=check_paths, level=False), axes


def spec_from_mapping(d: dict[str, Any], source: str = "flags", check_paths: bool = False) -> SweepSpec:
    """Validate the nested mapping (scenario file + flags) into a ``SweepSpec``."""
    from loadgen.scenario.model import SECTIONS

    _check_keys(d, (*SECTIONS, *SWEEP_TABLES), source)
    sw = _check_keys(d.get("sweep"), SWEEP_TABLES["sweep"], f"{source} [sweep]")
    st = _check_keys(d.get("stop"), SWEEP_TABLES["stop"], f"{source} [stop]")
    an = _check_keys(d.get("analysis"), SWEEP_TABLES["analysis"], f"{source} [analysis]")
    base, axes = base_scenario(d, source, check_paths)
    targets = parse_targets(sw, axes, base, f"{source} [sweep]")
    loads = parse_loads(sw, f"{source} [sweep]", base.load.requests, base.load.duration) or _base_load(base)
    if not loads and any(t.loads is None for t in targets):
        raise UsageError(f"{source}: no load levels; give offline = [N], rates = [...] or concurrencies = [...] "
                         "(flags --offline, --rates, --concurrencies), or a level's own --rate or --concurrency")
    notes = sw.get("notes") or []
    spec = SweepSpec(
        name=str(sw.get("name") or base.results.name or "sweep"), targets=targets, loads=loads, base=base,
        stop=_stop_rule(st, f"{source} [stop]"), analysis=_analysis(an, f"{source} [analysis]"),
        description=str(sw.get("description") or ""),
        notes=tuple(str(n) for n in (notes if isinstance(notes, list) else [notes])), source=source)
    spec.points()  # duplicate ids are an error now, not after the first points ran
    return spec


def spec_from_saved(d: dict[str, Any], source: str) -> SweepSpec:
    """The ``SweepSpec`` written to sweep.json (``SweepSpec.to_dict``), read back."""
    from loadgen.scenario.check import build

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
                         base=build(d["scenario"], source), stop=StopRule(**d.get("stop") or {}),
                         analysis=AnalysisOptions(**an), description=d.get("description", ""),
                         notes=tuple(d.get("notes") or ()), source=source)
    except (KeyError, TypeError) as err:
        raise UsageError(f"{source}: not a sweep.json written by this version of loadgen sweep ({err})") from None
