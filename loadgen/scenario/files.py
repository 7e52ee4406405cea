"""Scenario files: TOML in, TOML out (``--scenario FILE``, ``--print-scenario``).

Reading uses the standard library's ``tomllib`` (``tomli`` on Python 3.10); writing uses ``tomli-w``, a small,
well-kept writer, because TOML has quoting and table rules that are easy to get subtly wrong by hand. What is
written never holds a secret: API keys and credential headers come from flags or the environment at run time.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from loadgen.errors import UsageError

SECRET_HEADERS = ("authorization", "api-key", "x-api-key", "proxy-authorization", "cookie")
REDACTED = "<redacted>"


def _tomllib() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    import tomli  # pragma: no cover - Python 3.10 only

    return tomli  # pragma: no cover


def load_toml(path: str | Path, flag: str = "--scenario") -> dict[str, Any]:
    """The scenario file as a nested mapping; UsageError naming the file when it cannot be read or parsed."""
    tomllib = _tomllib()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot read ({err.strerror or err}); check the path") from None
    except UnicodeDecodeError:
        raise UsageError(f"{flag} {path}: not a UTF-8 text file; give a TOML scenario file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{flag} {path}: not valid TOML ({err})") from None


def is_secret_header(text: str) -> bool:
    name = text.partition(":")[0].strip().lower()
    return name in SECRET_HEADERS


def dump_toml(mapping: dict[str, Any], comment: str | None = None) -> str:
    """TOML text of ``mapping`` (None values left out: TOML has no null, and absent means the default)."""
    import tomli_w

    def prune(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: prune(x) for k, x in v.items() if x is not None and not (isinstance(x, dict) and not x)}
        if isinstance(v, (list, tuple)):
            return [prune(x) for x in v if x is not None]
        return v

    head = "".join(f"# {line}\n" for line in (comment or "").splitlines())
    return head + tomli_w.dumps(prune(mapping))


def split_credentials(url: str) -> tuple[str, str | None]:
    """``http://user:key@host:8000`` -> (``http://host:8000``, ``"Authorization: Basic ..."``); a URL without
    credentials comes back as it is. Credentials never stay in a URL, where they would reach files and logs."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url if "://" in url else f"//{url}")
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    clean = urlunsplit(parts._replace(netloc=hostport))
    if "://" not in url:
        clean = clean.removeprefix("//")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return clean, f"Authorization: Basic {token}"


def redact_text(text: str) -> str:
    """Any ``scheme://user:secret@`` in ``text`` with the credentials replaced (for argv, messages, logs)."""
    import re

    return re.sub(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@", lambda m: f"{m.group(1)}{REDACTED}@", text)
