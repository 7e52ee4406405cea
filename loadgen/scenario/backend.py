"""A scenario's target as the backend factories take it (``loadgen.codecs.registry.BackendOptions``)."""

from __future__ import annotations

from typing import Any

from loadgen.scenario.model import Scenario


def headers_of(sc: Scenario) -> dict[str, str]:
    """``--header NAME:VALUE`` items, then the API key as a bearer token (never written anywhere)."""
    headers: dict[str, str] = {}
    for item in sc.target.headers:
        name, _, value = item.partition(":")
        headers[name.strip()] = value.strip()
    if sc.target.api_key:
        headers["Authorization"] = f"Bearer {sc.target.api_key}"
    return headers


def backend_options(sc: Scenario, url: str) -> Any:
    from loadgen.codecs.base import parse_extra
    from loadgen.codecs.registry import BACKENDS, BackendOptions

    t = sc.target
    model = t.model or "ensemble"
    if t.url is None:  # the embedded server started for this level (kserve-infer: its one-response sibling)
        model = BACKENDS[t.backend].embedded_model(model)
    return BackendOptions(url=url, model=model, headers=headers_of(sc), verify_tls=not t.insecure,
                          request_timeout_s=sc.limits.request_timeout, perf_metrics=t.perf_metrics,
                          extra=parse_extra(t.extra, "--extra"), parameters=parse_extra(t.parameters, "--parameter"),
                          ignore_eos=t.ignore_eos, min_tokens=t.min_tokens, continuous_usage=t.continuous_usage,
                          http_client=t.http_client, max_response_bytes=sc.limits.max_response_bytes)
