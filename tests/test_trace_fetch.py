"""The trace catalog (checksums of the public files, bundled examples) and ``loadgen traces fetch`` against a local
HTTP server: verified download into the cache, bad checksum rejected with nothing cached, cache reuse."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from loadgen.cli import main
from loadgen.errors import UsageError
from loadgen.traces.catalog import find_entry, load_catalog, local_path, resolve_trace
from loadgen.traces.fetch import fetch_trace, sha256_of

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "traces"
SHARED_FILES = {
    "azure-conv-2023": "azure-llm-2023/AzureLLMInferenceTrace_conv.csv",
    "azure-code-2023": "azure-llm-2023/AzureLLMInferenceTrace_code.csv",
    "mooncake-synthetic": "mooncake/synthetic_trace.jsonl",
    "sharegpt-500": "sharegpt/ShareGPT_V3_filtered_500.json",
    "sharegpt-90k-sampled": "sharegpt/sg_90k_part1_html_cleaned_lang_first_sampled_sorted.json",
}


def test_catalog_checksums_match_the_public_files_and_examples(tmp_path):
    entries = load_catalog()
    names = [e["name"] for e in entries]
    assert len(set(names)) == len(names)
    for name, rel in SHARED_FILES.items():
        e = find_entry(name, entries)
        assert e["sha256"] == sha256_of(SHARED / rel) and e["size"] == (SHARED / rel).stat().st_size, name
        assert e["url"].startswith("https://") and e["license"] and e["citation"]
    bundled = [e for e in entries if e.get("bundled")]
    assert len(bundled) >= 3
    for e in bundled:
        assert sha256_of(local_path(e)) == e["sha256"] and e["size"] < 16_000  # a few KB each
    # the generator script rebuilds the bundled examples byte for byte
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "traces" / "make_examples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(tmp_path)
    for e in bundled:
        assert sha256_of(tmp_path / e["file"]) == e["sha256"], e["name"]
    assert all(e["format"] in ("azure", "mooncake", "burstgpt", "csv", "jsonl", "sharegpt") for e in entries)


class _Files(http.server.SimpleHTTPRequestHandler):
    requests = 0

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        type(self).requests += 1
        super().do_GET()


@pytest.fixture()
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = type("H", (_Files,), {"requests": 0})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(served)))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{srv.server_address[1]}", handler
    finally:
        srv.shutdown()
        srv.server_close()


def test_fetch_verifies_and_caches(tmp_path, file_server, monkeypatch):
    served, base, handler = file_server
    data = (ROOT / "traces" / "example_bursty.csv").read_bytes() * 20
    (served / "t.csv").write_bytes(data)
    good = hashlib.sha256(data).hexdigest()
    monkeypatch.setenv("LOADGEN_CACHE", str(tmp_path / "cache"))
    entry = {"name": "t", "file": "t.csv", "url": f"{base}/t.csv", "format": "azure", "sha256": good}
    path, digest = fetch_trace(entry, progress=False)
    assert path == tmp_path / "cache" / "traces" / "t.csv" and path.read_bytes() == data and digest == good
    assert not list(path.parent.glob("*.part"))
    fetch_trace(entry, progress=False)  # cached and still valid: not downloaded again
    assert handler.requests == 1
    path.write_bytes(b"tampered")
    fetch_trace(entry, progress=False)  # a corrupt cached copy is replaced
    assert handler.requests == 2 and path.read_bytes() == data

    bad = dict(entry, name="bad", file="bad.csv", sha256="0" * 64)
    with pytest.raises(UsageError, match="checksum mismatch for 'bad'") as err:
        fetch_trace(bad, progress=False)
    assert good in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "cache" / "traces" / "bad.csv").exists()
    assert not list((tmp_path / "cache" / "traces").glob("*.part"))

    unknown = dict(entry, name="u", file="u.csv", sha256=None)
    with pytest.raises(UsageError, match="--sha256 HEX"):
        fetch_trace(unknown, progress=False)
    p, d = fetch_trace(unknown, verify=False, progress=False)
    assert d == good and p.exists()
    missing = dict(entry, name="m", file="m.csv", url=f"{base}/nope.csv")
    with pytest.raises(UsageError, match="could not download 'm'"):
        fetch_trace(missing, progress=False)


def test_fetch_command_and_trace_names(tmp_path, file_server, monkeypatch, capsys):
    served, base, _ = file_server
    data = (ROOT / "traces" / "example_prefix.jsonl").read_bytes()
    (served / "p.jsonl").write_bytes(data)
    catalog = {"traces": [{"name": "mini", "file": "mini.jsonl", "url": f"{base}/p.jsonl", "format": "mooncake",
                           "sha256": hashlib.sha256(data).hexdigest(), "license": "test", "citation": "test"}]}
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    monkeypatch.setenv("LOADGEN_TRACE_CATALOG", str(tmp_path / "catalog.json"))
    monkeypatch.setenv("LOADGEN_CACHE", str(tmp_path / "cache"))
    assert main(["traces", "info", "mini"]) == 2
    assert "loadgen traces fetch mini" in capsys.readouterr().err
    assert main(["traces", "fetch", "mini", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "NOT verified" not in out
    path, defaults = resolve_trace("mini")
    assert Path(path).read_bytes() == data and defaults == {"format": "mooncake"}
    assert main(["traces", "info", "mini", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 60
    assert main(["traces", "fetch", "nosuch"]) == 2
    assert "no trace named 'nosuch'" in capsys.readouterr().err
    assert main(["traces", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["traces"][0]["name"] == "mini"
