"""One self-contained HTML page per run (``report.html`` in the run directory) and per comparison
(``loadgen report A B --html FILE``): the verdict and the summary table first, then what happened during the run
(rates, tokens/s, requests in flight with the server's running/queued and KV cache usage, GPU power, all on the
run's time axis), latency percentiles per window, TTFT and E2E CDFs, and TTFT against input length.

Plots are matplotlib PNGs embedded as base64 ``data:`` URIs, not plotly: plotly's JavaScript (about 3.5 MB) would
have to be embedded in every page to open without a network, and a sweep writes one page per point; a PNG page is
a few hundred kB, opens anywhere (a browser offline, a CI artefact viewer, an e-mail) and needs no script.

``data``: what the page shows, read from the run directory in one pass over the records; ``figures``: the plots;
``page``: the HTML. Writing the page costs a second or two of matplotlib at the end of a run.
"""

from __future__ import annotations

from pathlib import Path

from loadgen.report_html.data import RunData, collect_run

__all__ = ["RunData", "collect_run", "render", "write_report"]


def render(runs: list[RunData], title: str | None = None) -> str:
    """The page's HTML for one run (every line of it) or several (side by side, one colour per run)."""
    from loadgen.report_html import figures
    from loadgen.report_html.page import image, page

    single = len(runs) == 1
    if title is None:
        title = f"loadgen run: {runs[0].label}" if single else "loadgen comparison: " + ", ".join(r.label for r in runs)
    notes = [n if single else f"{r.label}: {n}" for r in runs for n in r.notes]
    sections: list[tuple[str, str]] = []
    made = [
        ("Over time", figures.timeline_figure, "timeline",
         "Each step is one window's value. Requests in flight: the client's mean per window (issued, not yet "
         "answered), with the server's own running and queued counts where its metrics were sampled."),
        ("Latency over time", figures.latency_figure, "latency",
         "Percentiles of the requests that completed in each window; gaps are windows without any."),
        ("Distributions", figures.cdf_figure, "cdf",
         "Cumulative share of requests at or below each latency; the dotted lines are the summary's percentiles."),
        ("TTFT against input length", figures.scatter_figure, "scatter",
         "Each dot is one request; a long prompt should cost more prefill time."),
    ]
    for heading, make, alt, caption in made:
        fig = make(runs)
        if fig is None:
            notes.append(f"{heading}: nothing to draw (no records, or no completed request)")
            continue
        sections.append((heading, image(figures.data_uri(fig), alt, caption)))
    from loadgen.report_html.turns import turns_figure, turns_section

    by_turn = turns_section(runs)  # multi-turn levels only
    if by_turn is not None:
        fig = turns_figure(runs)
        plot = image(figures.data_uri(fig), "by turn", "TTFT p50 and prompt length by turn.") if fig else ""
        sections.append(("By turn", by_turn + plot))
    return page(title, runs, sections, notes)


def write_report(path: str | Path, runs: list[RunData], title: str | None = None) -> Path:
    """Write ``path``, the page of ``runs`` (through a temporary file: a page is never left half written)."""
    out = Path(path)
    text = render(runs, title)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out

