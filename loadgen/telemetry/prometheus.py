"""Prometheus text exposition -> samples, on ``prometheus_client``'s parser.

One parser for every caller that scrapes a metrics page: the sweep's server watch (``loadgen.sweep.scrape``) and
the Triton power source (``loadgen.power.sources``).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, dict[str, str], float]

# What prometheus_client raises on a line it cannot read: ValueError nearly always, IndexError for an empty label
# name after a comma (``foo{a="1", ="x"} 2`` trips an index in its tokenizer).
_BAD_LINE = (ValueError, IndexError)


def parse_samples(text: str, wanted: Iterable[str] | None = None) -> list[Sample]:
    """``(name, labels, value)`` of every sample on a Prometheus text page, in page order; with ``wanted``, only
    the samples whose name is in it.

    Names are *sample* names exactly as the page writes them: ask for ``foo_total`` to get a counter published as
    ``foo_total``, for ``foo_bucket``/``foo_sum``/``foo_count`` to get a histogram's parts, and for Triton's
    ``nv_energy_consumption`` as it is (a counter without the ``_total`` suffix). Label values come unescaped
    (``\\"``, ``\\\\``, ``\\n``), values as floats (``NaN``, ``+Inf`` included); timestamps and exemplars are
    dropped.

    How it uses the library, and why:

    * Comment lines (``# HELP``, ``# TYPE`` and the rest) are dropped before parsing. prometheus_client munges
      what a ``# TYPE ... counter`` line announces into the OpenMetrics form: the samples of a counter family
      ``foo`` come back renamed ``foo_total``, which would rename Triton's ``nv_energy_consumption``. The callers
      want the names on the page and never the types, so every sample is parsed untyped, under its own name.
    * With ``wanted``, lines that do not start with a wanted name are dropped before parsing too: a Triton page is
      mostly per-model counters, and the power side-car scrapes it up to 10 times a second for a few families.
      The library costs about five times the old hand-written parsers per line, so filtering first keeps it cheap.
    * A malformed line (a truncated body, a bad label, a value that is not a number) must not lose the rest of
      the scrape: the callers poll the page during a run and a sample missing from one tick is harmless, while
      an exception would drop the whole tick (or, in the side-car, every tick while the server sends that line).
      prometheus_client raises on the first bad line, so the page is parsed in one call first (the common case,
      at full speed) and, only when that raises, again line by line, skipping the lines that raise.
    """
    want = None if wanted is None else frozenset(wanted)
    if want is None:
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    else:
        if not want:
            return []
        prefixes = tuple(want)
        lines = [ln for ln in text.splitlines() if ln.startswith(prefixes)]
    if not lines:
        return []
    try:
        return _samples(text_string_to_metric_families("\n".join(lines)), want)
    except _BAD_LINE:
        pass
    out: list[Sample] = []
    for ln in lines:
        try:
            out += _samples(text_string_to_metric_families(ln), want)
        except _BAD_LINE:
            continue
    return out


def _samples(families: Iterable, want: frozenset[str] | None) -> list[Sample]:
    return [(s.name, s.labels, float(s.value)) for fam in families for s in fam.samples
            if want is None or s.name in want]
