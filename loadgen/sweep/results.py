"""A sweep directory's results: rows + analysis into results.json/.csv, report.txt, plots/ and index.html.

``finalize`` runs after every sweep (also an interrupted one: what finished is analysed) and by
``loadgen sweep --report DIR``; ``load_sweep`` reads a sweep directory back (``loadgen compare`` uses it).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import orjson

from loadgen.errors import UsageError
from loadgen.level.rundir import write_json
from loadgen.sweep.analysis import analyze
from loadgen.sweep.grid import SweepSpec, spec_from_saved
from loadgen.sweep.runner import collect_rows

CSV_COLUMNS = ("point", "config", "load", "status", "profile", "gpu", "max_batch", "replicas", "speed", "backend",
               "throughput", "output_throughput", "request_throughput", "measured_throughput", "batch", "kv_peak",
               "preemptions", "ttft_p50", "ttft_p99", "tpot_mean", "itl_mean", "itl_p99", "e2e_mean", "e2e_p50",
               "e2e_p99", "j_per_token", "mean_power_w", "error_rate", "served_ratio", "completed", "valid")


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / "sweep.json").is_file()


def load_sweep(path: str | Path) -> tuple[SweepSpec, list[dict[str, Any]]]:
    """(spec, rows) of a sweep directory."""
    p = Path(path)
    try:
        meta = orjson.loads((p / "sweep.json").read_bytes())
    except OSError as err:
        raise UsageError(f"{path}: no readable sweep.json ({err.strerror}); is this a loadgen sweep directory?"
                         ) from None
    except orjson.JSONDecodeError as err:
        raise UsageError(f"{p / 'sweep.json'}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("spec"), dict):
        raise UsageError(f"{p / 'sweep.json'}: no 'spec' object; is this a loadgen sweep directory?")
    spec = spec_from_saved(meta["spec"], str(p / "sweep.json"))
    return spec, collect_rows(p, spec, spec.points())


def finalize(sweep_dir: Path, spec: SweepSpec, console: Any = None, plots: bool = True) -> dict[str, Any]:
    """Analyse the rows of ``sweep_dir``; write results, report, plots and the HTML page; print the tables."""
    from loadgen.sweep.tables import render, render_text, speed_note, sweep_tables

    rows = collect_rows(sweep_dir, spec, spec.points())
    a = spec.analysis
    analysis = analyze(rows, a.latency_metric, a.knee_factor, a.saturation_gain, a.slo, a.eta, a.latency_factor,
                       a.ref_batch)
    write_json(sweep_dir / "results.json", {"name": spec.name, "rows": rows, "analysis": analysis,
                                            "notes": list(spec.notes), "speed_note": speed_note(rows)})
    with open(sweep_dir / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in CSV_COLUMNS])
    (sweep_dir / "report.txt").write_text(render_text(rows, analysis, spec.notes))
    images: list[Path] = []
    if plots:
        from loadgen.sweep.plots import write_html, write_plots

        images = write_plots(rows, analysis, sweep_dir / "plots")
        intro = [x for x in (spec.description, speed_note(rows), *spec.notes) if x]
        write_html(sweep_dir / "index.html", f"loadgen sweep: {spec.name}", intro, sweep_tables(rows, analysis),
                   images)
    if console is not None:
        console.rule(f"sweep {spec.name}: {sum(r.get('status') == 'done' for r in rows)} of {len(rows)} points done")
        render(rows, analysis, console, spec.notes)
        console.print(f"sweep directory: {sweep_dir}  (results.json, results.csv, report.txt"
                      + (", plots/, index.html)" if plots else ")"), highlight=False)
    return {"rows": rows, "analysis": analysis, "images": images}
