"""Cross-validate the emulator: fit on one model's published curve, predict the other's, print the errors.

    .venv/bin/python benchmarks/cross_validate.py            # both directions, print the table, update CALIBRATION.md
    .venv/bin/python benchmarks/cross_validate.py --no-write # print only

The study (docs/STUDY.md) published two batch sweeps on the same card: OPT-1.3B and Llama-2-7B. For each of the
two, this script refits the emulator's fitted constants (``calibrate_emulator.fit``: the performance constants on
that model's throughput and ITL, plus, for OPT-1.3B, the host shares and power figures measured only for it)
and then predicts *both* models in virtual time, 2,000 requests per point. The rows that matter are the
predictions for the model the fit did not see; the in-sample rows show the fit.

Columns: worst throughput and ITL error over the sweep; a phase-separated run, prefill and decode apart (a lone
111-token prompt's prefill, and a steady decode step at batch 64 with 400 tokens of context): no published figure
exists for either, so they are compared with the target model's own fit (how far a transfer moves them); J per
token at batch 1 and 512 (published for OPT-1.3B only); the replication gain of 2 x 256 under MPS over 1 x 768
(published for OPT-1.3B only). Done when every out-of-sample throughput and ITL error is within 10 %: exit status
1 otherwise. ``--write`` (the default) puts the table, the machine and the date into benchmarks/CALIBRATION.md
between the cross-validation markers (calibrate_emulator.py keeps that block when it rewrites the file).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadgen.emulator.perfmodel import decode_step_time, prefill_time  # noqa: E402
from loadgen.emulator.profiles import get_gpu, get_model  # noqa: E402
from loadgen.emulator.simulate import simulate_offline  # noqa: E402

_spec = importlib.util.spec_from_file_location("calibrate_emulator", ROOT / "benchmarks" / "calibrate_emulator.py")
cal = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cal)

MODELS = ("opt-1.3b", "llama-2-7b")
TOL_PREDICTION = 0.10  # done-when: out-of-sample throughput and ITL within 10 %
PREFILL_TOKENS = 111  # the study's mean prompt
DECODE_BATCH, DECODE_CONTEXT = 64, 400
BEGIN, END = "<!-- cross-validation -->", "<!-- /cross-validation -->"


def evaluate(gpu, model: str, n_requests: int) -> dict:
    """Everything the table compares, for ``model`` on ``gpu`` (a profile with some set of constants)."""
    runs = cal.sweep(model, gpu, sorted(cal.REFERENCE[model]), n_requests)
    rows = cal.comparison_rows(model, runs)
    out = {
        "tput_err": max((r["tput_err"] for r in rows), key=abs),
        "itl_err": max((r["itl_err"] for r in rows), key=abs),
        "rows": rows,
        "prefill_s": prefill_time(get_model(model), gpu, PREFILL_TOKENS),
        "decode_s": decode_step_time(get_model(model), gpu, DECODE_BATCH, DECODE_CONTEXT),
    }
    if model == "opt-1.3b":
        jpt = {b: simulate_offline(model, gpu, b, n_requests)["joules_per_token"] for b in cal.REFERENCE_POWER}
        out["jpt_err"] = max((jpt[b] / ref[1] - 1 for b, ref in cal.REFERENCE_POWER.items()), key=abs)
        single = simulate_offline(model, gpu, cal.REFERENCE_REPLICATION["single"][0], n_requests)
        double = simulate_offline(model, gpu, cal.REFERENCE_REPLICATION["double"][0], n_requests, replicas=2)
        gain = double["total_tokens_per_s"] / single["total_tokens_per_s"] - 1
        ref_gain = cal.REFERENCE_REPLICATION["double"][1] / cal.REFERENCE_REPLICATION["single"][1] - 1
        out["gain"], out["gain_err"] = gain, gain - ref_gain
    return out


def cross_validate(n_requests: int = cal.N_REQUESTS) -> dict:
    base = get_gpu(cal.GPU)
    t0 = time.perf_counter()
    fits, results = {}, {}
    for source in MODELS:
        constants = cal.fit(n_requests, model=source)
        fits[source] = constants
        gpu = cal.gpu_with(base, constants)
        for target in MODELS:
            results[(source, target)] = evaluate(gpu, target, n_requests)
    for (_source, target), res in results.items():
        own = results[(target, target)]
        res["prefill_err"] = res["prefill_s"] / own["prefill_s"] - 1
        res["decode_err"] = res["decode_s"] / own["decode_s"] - 1
    return {"fits": fits, "results": results, "seconds": time.perf_counter() - t0, "n_requests": n_requests}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} %"


def table_rows(cv: dict) -> list[tuple[str, ...]]:
    rows = []
    for (source, target), r in cv["results"].items():
        kind = "fit" if source == target else "prediction"
        rows.append((source, target, kind, _pct(r["tput_err"]), _pct(r["itl_err"]), _pct(r["prefill_err"]),
                     _pct(r["decode_err"]), _pct(r.get("jpt_err")),
                     "n/a" if "gain" not in r else f"{100 * r['gain']:+.1f} % ({_pct(r['gain_err'])} pt)"))
    return rows


HEADER = ("fitted on", "predicts", "kind", "throughput, worst", "ITL, worst", "lone prefill vs own fit",
          "decode step vs own fit", "J/token, worst", "2 x 256 gain (error)")


def passed(cv: dict) -> bool:
    return all(abs(r["tput_err"]) <= TOL_PREDICTION and abs(r["itl_err"]) <= TOL_PREDICTION
               for (s, t), r in cv["results"].items() if s != t)


def print_table(cv: dict) -> None:
    widths = [max(len(h), *(len(row[i]) for row in table_rows(cv))) for i, h in enumerate(HEADER)]
    line = "  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in table_rows(cv):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print()
    for source, constants in cv["fits"].items():
        shown = ", ".join(f"{k}={v:.4g}" for k, v in constants.items())
        print(f"constants fitted on {source}: {shown}")
    verdict = "PASS" if passed(cv) else "FAIL"
    print(f"{verdict}: out-of-sample throughput and ITL within {100 * TOL_PREDICTION:.0f} % "
          f"({cv['n_requests']} requests per point, {cv['seconds']:.0f} s)")


def markdown(cv: dict) -> str:
    machine = f"{os.uname().nodename}, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [BEGIN, "## Cross-validation: fitted on one model, predicting the other", "",
             f"Generated by `benchmarks/cross_validate.py` on {date} ({machine}; virtual time, "
             f"{cv['n_requests']} requests per point, {cv['seconds']:.0f} s). Each fit refits the fitted constants "
             "on one model's published sweep (OPT-1.3B also brings its host shares and power figures, measured "
             "for it only; a fit on Llama-2-7B keeps the a priori power constants), then predicts both models. "
             "Worst = largest error over the sweep's points. No prefill-only or decode-only figure was published: "
             "those two columns compare a transfer with the target's own fit. J/token and the replication gain "
             "were published for OPT-1.3B only.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(cv)]
    lines.append("")
    for source, constants in cv["fits"].items():
        lines.append(f"- fitted on {source}: " + ", ".join(f"`{k}` {v:.4g}" for k, v in constants.items()))
    lines += ["", f"Out-of-sample throughput and ITL within {100 * TOL_PREDICTION:.0f} %: "
              f"**{'yes' if passed(cv) else 'no'}**.", END]
    return "\n".join(lines)


def write_block(block: str, path: Path) -> None:
    """Put ``block`` into ``path`` between the markers (appended when the file has none)."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=cal.N_REQUESTS, help="requests per point (default 2000)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "CALIBRATION.md", help="markdown to update")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    cv = cross_validate(args.requests)
    print_table(cv)
    if not args.no_write:
        write_block(markdown(cv), args.out)
        print(f"updated {args.out}")
    return 0 if passed(cv) else 1


if __name__ == "__main__":
    raise SystemExit(main())
