"""The launcher: finding tritonserver, filling the emulated repository, starting/stopping real servers, and the one
clear line for each kind of wrong use."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from loadgen.cli import main as cli_main
from loadgen.errors import TargetError, UsageError
from loadgen.serve import launcher
from loadgen.serve.launcher import EmbeddedServer, ServerConfig, process_tree
from loadgen.serve.repository import EmulatedModelSpec, write_emulated_repository
from loadgen.serve.triton_binary import build_backend_dir, find_triton, server_environment
from tests.conftest import is_triton_process

REQUIRED = {"text_input": "TYPE_STRING", "max_tokens": "TYPE_INT32"}
OPTIONAL = {
    "stream": "TYPE_BOOL", "end_id": "TYPE_INT32", "pad_id": "TYPE_INT32", "min_tokens": "TYPE_INT32",
    "top_k": "TYPE_INT32", "beam_width": "TYPE_INT32", "top_p": "TYPE_FP32", "temperature": "TYPE_FP32",
    "length_penalty": "TYPE_FP32", "repetition_penalty": "TYPE_FP32", "presence_penalty": "TYPE_FP32",
    "frequency_penalty": "TYPE_FP32", "seed": "TYPE_UINT64", "bad_words": "TYPE_STRING", "stop_words": "TYPE_STRING",
    "exclude_input_in_output": "TYPE_BOOL", "return_num_input_tokens": "TYPE_BOOL",
    "return_num_output_tokens": "TYPE_BOOL", "return_perf_metrics": "TYPE_BOOL",
}


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _wait_gone(pids: list[int], within: float) -> list[int]:
    end = time.monotonic() + within
    alive = [p for p in pids if is_triton_process(p)]
    while alive and time.monotonic() < end:
        time.sleep(0.1)
        alive = [p for p in alive if is_triton_process(p)]
    return alive


# ------------------------------------------------------------------------------------------ binary and repository
def test_find_triton_and_environment(tmp_path: Path) -> None:
    inst = find_triton()
    assert inst.server.name == "tritonserver" and os.access(inst.server, os.X_OK)
    assert (inst.python_backend / "libtriton_python.so").is_file()
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in str(inst.stub)
    env = server_environment(inst, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/x"})
    ld = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert ld[0] == sysconfig.get_config_var("LIBDIR") and ld[-1] == "/opt/x"
    assert any(p.endswith("nvidia_pytriton.libs") for p in ld)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    backends = build_backend_dir(inst, tmp_path / "b")
    assert os.access(backends / "python" / "triton_python_backend_stub", os.X_OK)
    assert (backends / "python" / "libtriton_python.so").is_file()


def test_emulated_repository_is_a_valid_decoupled_trtllm_style_model(tmp_path: Path) -> None:
    spec = EmulatedModelSpec(model_name="slm", profile="opt-350m", gpu="a100-80gb", max_batch=48, replicas=3,
                             speed=0.5)
    repo = write_emulated_repository(spec, tmp_path / "repo", tmp_path / "gpu.state")
    cfg = _parse(repo / "slm" / "config.pbtxt")
    assert (repo / "slm" / "1" / "model.py").is_file()
    assert cfg.name == "slm" and cfg.backend == "python" and cfg.max_batch_size == 48
    assert cfg.model_transaction_policy.decoupled
    assert [g.count for g in cfg.instance_group] == [3]
    types = {i.name: model_config_pb2.DataType.Name(i.data_type) for i in cfg.input}
    assert types == {**REQUIRED, **OPTIONAL}
    assert not any(i.optional for i in cfg.input if i.name in REQUIRED)
    assert all(i.optional for i in cfg.input if i.name in OPTIONAL)
    assert all(list(i.dims) in ([1], [-1]) for i in cfg.input)
    outs = {o.name: model_config_pb2.DataType.Name(o.data_type) for o in cfg.output}
    assert outs["text_output"] == "TYPE_STRING" and outs["num_output_tokens"] == "TYPE_INT32"
    assert outs["first_token_time_ns"] == "TYPE_INT64"
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["emulated_model"] == "opt-350m" and params["emulated_gpu"] == "a100-80gb"
    assert params["replicas"] == "3" and float(params["speed"]) == 0.5
    assert params["shared_gpu_path"] == str(tmp_path / "gpu.state")


# ------------------------------------------------------------------------------------------ wrong use: one line each
@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"profile": "opt-9b"}, r"unknown model profile 'opt-9b': choose one of .*opt-125m"),
        ({"gpu": "rtx-4090"}, r"unknown GPU profile 'rtx-4090': choose one of .*h100-64gb"),
        ({"profile": "llama-2-7b", "max_batch": 5000}, r"max batch 5000 does not fit: at most \d+"),
        ({"profile": "llama-2-13b", "gpu": "h100-64gb", "replicas": 4}, r"does not fit on h100-64gb with 4"),
        ({"replicas": 0}, r"--replicas 0 is invalid"),
        ({"speed": 0}, r"--speed 0 is invalid"),
        ({"model_name": "a b"}, r"--model-name 'a b' is invalid"),
        ({"tritonserver": "/nonexistent/bin/tritonserver"}, r"/nonexistent/bin/tritonserver is missing: .*pip install "
                                                            r"nvidia-pytriton"),
    ],
)
def test_wrong_use_is_one_clear_line(overrides: dict, pattern: str) -> None:
    with pytest.raises(UsageError) as err:
        EmbeddedServer(ServerConfig(**overrides)).start(timeout=5)
    assert "\n" not in str(err.value)
    assert re.search(pattern, str(err.value)), str(err.value)


def test_port_in_use_names_the_flag() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for flag, field in (("--http-port", "http_port"), ("--grpc-port", "grpc_port"),
                            ("--metrics-port", "metrics_port")):
            with pytest.raises(UsageError, match=rf"{flag} {port}: port already in use on 127.0.0.1"):
                EmbeddedServer(ServerConfig(**{field: port})).start(timeout=5)


def _fake_binary(tmp_path: Path, body: str, mode: int = 0o755) -> Path:
    path = tmp_path / "bin" / "tritonserver"
    path.parent.mkdir(parents=True)
    path.write_text(body)
    path.chmod(mode)
    return path


def test_broken_binaries(tmp_path: Path) -> None:
    not_exec = _fake_binary(tmp_path, "#!/bin/sh\nexit 0\n", mode=0o644)
    if os.access(not_exec, os.X_OK):  # pragma: no cover - root sees no difference on some filesystems
        pytest.skip("cannot make a non-executable file here")
    with pytest.raises(UsageError, match=r"is not executable .*nvidia-pytriton"):
        EmbeddedServer(ServerConfig(tritonserver=str(not_exec))).start(timeout=5)


def test_garbage_binary_cannot_run(tmp_path: Path) -> None:
    garbage = _fake_binary(tmp_path, "\x7fELF this is not a program\n")
    with pytest.raises(UsageError, match=rf"cannot run tritonserver {re.escape(str(garbage))}: .*nvidia-pytriton"):
        EmbeddedServer(ServerConfig(tritonserver=str(garbage))).start(timeout=5)


def test_server_that_exits_reports_log_lines(tmp_path: Path) -> None:
    crash = _fake_binary(tmp_path, "#!/bin/sh\necho 'E0101 fake.cc:1] model ensemble failed: boom'\nexit 3\n")
    server = EmbeddedServer(ServerConfig(tritonserver=str(crash)))
    with pytest.raises(TargetError) as err:
        server.start(timeout=10)
    msg = str(err.value)
    assert "\n" not in msg and "exited with code 3 before it was ready" in msg
    assert str(server.log_path) in msg and "model ensemble failed: boom" in msg
    assert server.log_path.is_file()  # kept so the user can read it
    server.stop()
    shutil.rmtree(server.workdir)


def test_server_that_never_gets_ready_times_out(tmp_path: Path) -> None:
    hang = _fake_binary(tmp_path, "#!/bin/sh\necho 'I0101 fake.cc:1] still loading'\nexec sleep 30\n")
    server = EmbeddedServer(ServerConfig(tritonserver=str(hang)))
    t0 = time.monotonic()
    with pytest.raises(TargetError, match=r"did not become ready in time.*still loading") as err:
        server.start(timeout=1.0)
    assert time.monotonic() - t0 < 8
    assert str(server.log_path) in str(err.value)
    assert not server.running
    shutil.rmtree(server.workdir)


def test_cli_wrong_use_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serve", "--server-model", "gpt-5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("loadgen serve: error: unknown model profile 'gpt-5'")
    assert cli_main(["serve", "--out", "x"]) == 2
    assert "need --trtllm-engine" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ real servers
def test_session_server_endpoints(embedded_server: EmbeddedServer) -> None:
    s = embedded_server
    ports = {s.http_port, s.grpc_port, s.metrics_port}
    assert len(ports) == 3 and all(ports)
    assert s.grpc_url == f"127.0.0.1:{s.grpc_port}"
    assert s.http_url == f"http://127.0.0.1:{s.http_port}"
    assert urllib.request.urlopen(s.http_url + "/v2/models/ensemble/ready", timeout=5).status == 200
    tree = s.process_tree()
    assert tree[0] == s.pid and len(tree) >= 1 + s.config.replicas  # the server and one stub per replica
    assert s.log_path is not None and s.log_path.is_file()
    info = s.describe()
    assert info["profile"] == "opt-125m" and info["grpc_url"] == s.grpc_url and info["pid"] == s.pid


def _shm_regions(pids: list[int], prefix: str) -> list[str]:
    """The shared-memory region names on the stubs' command lines."""
    names = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names += [a.decode() for a in argv if a.startswith(prefix.encode())]
    return names


def test_port_race_retry_and_clean_shutdown(server_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    picks: list[int] = []
    real_free_port = launcher.free_port

    def racy_free_port(address: str = "127.0.0.1") -> int:
        # The first pick is a port someone else grabs between our probe and tritonserver's bind.
        picks.append(taken if not picks else real_free_port(address))
        return picks[-1]

    monkeypatch.setattr(launcher, "free_port", racy_free_port)
    try:
        server = server_factory(replicas=1, max_batch=8)
    finally:
        busy.close()
    assert taken not in (server.http_port, server.grpc_port, server.metrics_port) and len(picks) == 6
    assert f"Socket '127.0.0.1:{taken}' already in use" in server.log_path.read_text()
    tree = server.process_tree()
    regions = _shm_regions(tree, server.shm_prefix)
    workdir = server.workdir
    # the server, the replica's stub and the stub of the one-response sibling (<model>_infer), each stub with its region
    assert len(tree) == 3 and len(regions) == 2 and workdir.is_dir()
    assert all(Path("/dev/shm", r).exists() for r in regions)
    server.stop()
    assert not server.running and server.returncode is not None
    assert _wait_gone(tree, 1.0) == []
    assert not workdir.exists()
    assert not [r for r in regions if Path("/dev/shm", r).exists()]


def test_stop_ends_the_server_once_every_model_is_unloaded(server_factory) -> None:
    """Triton takes about 3 s to exit after SIGTERM (it re-checks once a second) while the graceful part is soon
    over: stop() kills it by its pid only after the log says each loaded model was unloaded and its stubs left,
    so nothing is skipped (no stub, no shared-memory region left behind)."""
    server = server_factory(replicas=1, max_batch=8, keep_workdir=True)
    tree = server.process_tree()
    regions = _shm_regions(tree, server.shm_prefix)
    server.stop()
    log = server.log_path.read_text()
    for model in ("ensemble", "ensemble_infer"):
        assert f"successfully unloaded '{model}'" in log
    assert server.returncode == -signal.SIGKILL  # stopped at that point, not after Triton's own exit
    assert _wait_gone(tree, 1.0) == [] and not [r for r in regions if Path("/dev/shm", r).exists()]
    shutil.rmtree(server.workdir, ignore_errors=True)
    assert server.leftover_shm() == []  # the failed first attempt's region too
    server.stop()  # idempotent


def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    child_code = textwrap.dedent(f"""
        import sys, time
        from loadgen.serve.launcher import EmbeddedServer, ServerConfig
        s = EmbeddedServer(ServerConfig(profile="opt-125m", max_batch=8, workdir={str(tmp_path / 'w')!r}))
        s.start(timeout=60)
        print(" ".join(map(str, s.process_tree())), flush=True)
        time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE, text=True,
                             cwd=str(Path(__file__).resolve().parents[1]))
    try:
        line = child.stdout.readline()
        tree = [int(p) for p in line.split()]
        assert len(tree) == 3 and all(is_triton_process(p) for p in tree), line  # server, replica, _infer sibling
    finally:
        child.kill()  # SIGKILL: no Python cleanup runs; only the kernel's parent-death signal can stop the server
        child.wait()
    assert _wait_gone(tree, 20.0) == []


def test_cli_serve_runs_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadgen", "serve", "--server-model", "opt-125m", "--server-max-batch", "8", "--server-speed", "0.2",
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parents[1]),
    )
    try:
        lines = []
        while not lines or not lines[-1].startswith("Ctrl-C"):
            line = proc.stdout.readline()
            assert line, f"serve exited early: {proc.stderr.read()}"
            lines.append(line.strip())
        text = "\n".join(lines)
        pid = int(re.search(r"\(pid (\d+)\)", text).group(1))
        url = re.search(r"HTTP\s+(http://127\.0\.0\.1:\d+)/v2/models/ensemble/generate_stream", text).group(1)
        assert re.search(r"gRPC\s+127\.0\.0\.1:\d+", text) and re.search(r"metrics\s+http://127\.0\.0\.1:\d+/metrics",
                                                                          text)
        assert urllib.request.urlopen(url + "/v2/health/ready", timeout=5).status == 200
        tree = process_tree(pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _wait_gone(tree, 5.0) == []
