"""``loadgen traces fetch NAME``: download a catalog trace into the cache, verified by sha256.

The download goes to ``NAME.part`` beside its final place, is hashed while it streams, and is renamed into
place (atomic on one file system) only when the checksum matches, so the cache never holds a partial or wrong
file under a trace's name. A file already cached is re-verified instead of downloaded again.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from loadgen.errors import UsageError
from loadgen.traces.catalog import local_path

CHUNK = 1 << 20
TIMEOUT_S = 60


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _progress(total: int | None, label: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    prog = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), transient=False)
    prog.start()
    prog.add_task(label, total=total)
    return prog


def fetch_trace(entry: dict[str, Any], *, sha256: str | None = None, verify: bool = True, url: str | None = None,
                dest: Path | None = None, force: bool = False, progress: bool = True) -> tuple[Path, str]:
    """Download ``entry`` (a catalog entry) and return (path, sha256). UsageError on any failure, one line."""
    if entry.get("bundled"):
        path = local_path(entry)
        return path, sha256_of(path)
    expected = (sha256 or entry.get("sha256") or "").lower() or None
    if verify and expected is None:
        raise UsageError(f"the catalog has no checksum for {entry['name']!r}; pass --sha256 HEX if you know it, or "
                         "--no-verify to download it unverified (the computed checksum is printed)")
    dest = dest or local_path(entry)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and not force:
        got = sha256_of(dest)
        if not verify or got == expected:
            return dest, got
    src = url or entry["url"]
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    prog = None
    try:
        with urllib.request.urlopen(src, timeout=TIMEOUT_S) as resp, open(part, "wb") as out:  # noqa: S310
            length = resp.headers.get("Content-Length")
            prog = _progress(int(length) if length and length.isdigit() else None, entry["name"], progress)
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                out.write(block)
                h.update(block)
                if prog is not None:
                    prog.advance(prog.task_ids[0], len(block))
    except (urllib.error.URLError, OSError, ValueError) as err:
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise UsageError(f"could not download {entry['name']!r} from {src} ({reason}); check the network or "
                         "pass --url") from None
    finally:
        if prog is not None:
            prog.stop()
    got = h.hexdigest()
    if verify and got != expected:
        part.unlink(missing_ok=True)
        raise UsageError(f"checksum mismatch for {entry['name']!r}: expected {expected}, got {got}; the download "
                         "was corrupted or the upstream file changed (nothing was cached)")
    os.replace(part, dest)
    return dest, got
