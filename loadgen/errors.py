"""User-facing errors: one clear line naming the bad input and what to do, and a non-zero exit."""

from __future__ import annotations


class LoadgenError(Exception):
    """An error the user can act on. ``str(err)`` is the single line printed by the CLI."""

    exit_code = 2


class UsageError(LoadgenError):
    """A bad flag value, an impossible rate, an unknown backend: exit code 2."""

    exit_code = 2


class TargetError(LoadgenError):
    """The target cannot be used: unreachable URL, unknown model, wrong backend for the endpoint: exit code 3."""

    exit_code = 3


class ThresholdFailed(LoadgenError):
    """A ``--fail-on`` threshold was missed: exit code 4 (the run itself completed and was saved)."""

    exit_code = 4


class ResultsError(LoadgenError):
    """The results cannot be written (disk full, a file-size limit, the directory gone): exit code 6. The load
    stops within a second; whatever was written stays readable by ``loadgen report``."""

    exit_code = 6
