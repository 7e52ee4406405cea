"""The ``loadgen`` command. Each subcommand lives in its own module with ``configure(parser)`` and
``execute(args) -> int``; they are listed here explicitly (no registration by import side effect) and imported only
when used, so ``loadgen --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from loadgen import __version__
from loadgen.errors import LoadgenError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("loadgen.run_cli", "run one load level against one endpoint (or the embedded Triton server)"),
    "report": ("loadgen.report_cli", "re-render the report of one or more run directories (side by side)"),
    "serve": ("loadgen.serve.cli", "start the embedded Triton server hosting the emulated SLM engine"),
    "power": ("loadgen.power.cli", "power side-car: sample GPU power/energy to a file (or --analyze a run)"),
    "traces": ("loadgen.traces.cli", "trace statistics (a file or a replay's run), the public trace catalog, fetch"),
    "sweep": ("loadgen.sweep.cli", "a grid of load levels x server configurations; Pareto frontier, knee, advice"),
    "search": ("loadgen.search.cli", "the highest rate (or users) that meets a --fail-on condition, with confidence"),
    "compare": ("loadgen.sweep.compare", "the same workload against several backends/configurations, side by side"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadgen",
        description="Load generator and trace replay for small-language-model serving.",
    )
    parser.add_argument("--version", action="version", version=f"slm-loadgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Only the chosen subcommand's module is imported to configure its flags (see main).
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Configure the chosen subcommand's parser lazily: find the first non-flag word.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in COMMANDS:
        sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        module = importlib.import_module(COMMANDS[chosen][0])
        module.configure(sub_action.choices[chosen])
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.execute(args) or 0)
    except LoadgenError as err:
        print(f"loadgen {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"loadgen {args.command}: interrupted", file=sys.stderr)
        return 130
