"""Run directories: ``runs/<YYYYmmdd-HHMMSS>-<name>/`` holding config.json, records.jsonl, summary.json, report.txt."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import orjson


def make_run_dir(out_dir: Path, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / f"{stamp}-{safe}"
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


def write_json(path: Path, obj: Any) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a JSON file."""
    data = orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.write(b"\n")
    os.replace(tmp, path)
