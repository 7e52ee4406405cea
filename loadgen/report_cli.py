"""``loadgen report RUN_DIR [RUN_DIR ...]``: re-render saved levels side by side, or print them as JSON; ``--html``
also writes them as one self-contained page (``loadgen.report_html``).

A run directory normally holds ``summary.json``. A crashed run may have only ``records.jsonl`` and ``config.json``:
its summary is then recomputed from the records (the same ``summarize`` the runner uses) and the report says so,
so a crash never costs the numbers of what did complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson
from rich.console import Console

from loadgen.core.metrics import metrics_help
from loadgen.core.summary import LevelContext, level_records_files, load_level_records, summarize
from loadgen.errors import UsageError
from loadgen.report import output_width, render_report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (one row per level)")
    parser.add_argument("--json", action="store_true", help="print the summaries as one JSON list instead")
    parser.add_argument("--html", nargs="?", const="report.html", default=None, metavar="FILE",
                        help="also write one self-contained HTML page (plots inlined: it opens offline): the run's "
                             "page for one RUN_DIR, a side-by-side comparison for several. FILE defaults to "
                             "report.html in the current directory, not next to the runs: a run's own "
                             "report.html stays as the run wrote it")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = metrics_help()


def _read_json(path: Path) -> object:
    try:
        return orjson.loads(path.read_bytes())
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror})") from err
    except orjson.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err}); re-run the level or remove the file") from err


def _recompute(run_dir: Path) -> dict:
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise UsageError(f"{run_dir}: has records.jsonl but no summary.json or config.json to recompute it from")
    config = _read_json(config_path)
    if not isinstance(config, dict) or not isinstance(config.get("level_context"), dict):
        raise UsageError(f"{config_path}: no 'level_context' object; cannot recompute the summary")
    ctx = LevelContext.from_dict(config["level_context"], source=str(config_path))
    summary = summarize(load_level_records(run_dir), ctx)
    summary["recomputed"] = True
    return summary


def load_run_dir(run_dir: str | Path) -> tuple[list[dict], str | None]:
    """(summaries of ``run_dir``, a note when they were recomputed from records). ``summary.json`` may hold one
    summary or a list of them (a sweep)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"{run_dir}: not a run directory (it does not exist or is not a directory)")
    summary_path = path / "summary.json"
    has_records = bool(level_records_files(path))
    if summary_path.is_file():
        data = _read_json(summary_path)
        items = data if isinstance(data, list) else [data]
        if not items or not all(isinstance(s, dict) for s in items):
            raise UsageError(f"{summary_path}: expected a summary object or a list of them")
        # A distributed level whose master could not read the workers' records wrote a summary from merged
        # histograms; once the records files are gathered here, the exact summary replaces it.
        if not (has_records and len(items) == 1 and items[0].get("merged_from_histograms")):
            return list(items), None
    if has_records:
        summary = _recompute(path)
        files = ", ".join(p.name for p in level_records_files(path))
        why = "summary.json came from merged histograms" if summary_path.is_file() else "no summary.json"
        note = f"{run_dir}: {why}; recomputed from {files}"
        skipped = summary.get("records_skipped") or 0
        if skipped:
            note += f" (skipped {skipped} truncated last line)"
        return [summary], note
    raise UsageError(f"{run_dir}: no summary.json or records.jsonl; is this a loadgen run directory?")


def execute(args: argparse.Namespace) -> int:
    summaries: list[dict] = []
    notes: list[str] = []
    levels: list[tuple[Path | None, dict]] = []  # for --html: each level with the directory of its records
    for run_dir in args.run_dirs:
        items, note = load_run_dir(run_dir)
        if note:
            notes.append(note)
        if len(args.run_dirs) > 1:
            for s in items:
                s.setdefault("label", f"{Path(run_dir).name}/{s.get('name', '?')}")
        summaries.extend(items)
        levels += [(Path(run_dir) if len(items) == 1 else None, s) for s in items]
    for note in notes:
        print(f"loadgen report: {note}", file=sys.stderr)
    if args.html:
        _write_html(Path(args.html), levels)
    if args.json:
        sys.stdout.write(orjson.dumps(summaries, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    title = "loadgen report: " + ", ".join(str(d) for d in args.run_dirs)
    # COLUMNS when set, else the terminal's width, else 120 (a pipe or a CI log: no terminal to ask)
    render_report(summaries, Console(width=output_width()), title=title)
    return 0


def _write_html(path: Path, levels: list[tuple[Path | None, dict]]) -> None:
    """``--html``: the page of the levels (read-only on the run directories: a run's series comes from its
    ``timeseries.json``, or from its records when an older run has none)."""
    from loadgen.report_html import collect_run, write_report

    runs = [collect_run(run_dir, summary) for run_dir, summary in levels]
    try:
        write_report(path, runs)
    except OSError as err:
        raise UsageError(f"--html {path}: cannot write ({err.strerror or err})") from err
    print(f"loadgen report: wrote {path}", file=sys.stderr)
