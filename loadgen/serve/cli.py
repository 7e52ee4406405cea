"""``loadgen serve``: run the embedded Triton server with the emulated SLM, or prepare a TensorRT-LLM repository.

Without ``--trtllm-engine`` it starts tritonserver (from nvidia-pytriton) hosting the emulated model, prints the
endpoints and serves until Ctrl-C / SIGTERM. With ``--trtllm-engine DIR --tokenizer-dir DIR --out REPO`` it fills
the TensorRT-LLM model repository templates for a real GPU and prints (``--print-command``, the default) or runs
(``--run``) the matching ``tritonserver`` or ``docker run`` command.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from loadgen.errors import TargetError, UsageError


def configure(parser: argparse.ArgumentParser) -> None:
    from loadgen.scenario.flags import add_flags

    # the server part of the scenario: the same flags, defaults and help as loadgen run and loadgen sweep
    add_flags(parser, sections=["server"], group_titles={"server": "emulated server (default), and the engine "
                                                                   "size of a TensorRT-LLM repository"})
    emu = parser.add_argument_group("emulated server, more")
    emu.add_argument("--gpu-memory-fraction", type=float, default=0.9,
                     help="share of GPU memory for weights + KV cache (default: 0.9)")
    emu.add_argument("--model-name", default="ensemble", help="Triton model name clients use (default: ensemble)")
    emu.add_argument("--metrics-interval-ms", type=int, default=100,
                     help="how often replicas publish their custom metrics (default: 100)")
    net = parser.add_argument_group("server")
    net.add_argument("--http-port", type=int, default=8000, help="HTTP port, 0 = pick a free one (default: 8000)")
    net.add_argument("--grpc-port", type=int, default=8001, help="gRPC port, 0 = pick a free one (default: 8001)")
    net.add_argument("--metrics-port", type=int, default=8002, help="metrics port, 0 = pick a free one (default: 8002)")
    net.add_argument("--address", default="127.0.0.1", help="bind address of all three endpoints (default: 127.0.0.1)")
    net.add_argument("--http-address", default=None, help="bind address of HTTP (default: --address)")
    net.add_argument("--grpc-address", default=None, help="bind address of gRPC (default: --address)")
    net.add_argument("--metrics-address", default=None, help="bind address of metrics (default: --address)")
    net.add_argument("--openai-port", type=int, default=None,
                     help="also serve an OpenAI-compatible API (/v1/completions, /v1/chat/completions) on this "
                          "port, in front of the Triton model (0 = pick a free one; default: off)")
    net.add_argument("--served-model-name", default=None,
                     help="model name of the OpenAI-compatible API (default: the --server-model profile)")
    net.add_argument("--openai-reasoning-tokens", type=int, default=0, metavar="N",
                     help="the OpenAI API streams the first N tokens of each chat answer as reasoning_content "
                          "deltas, as a reasoning model does (a request's \"reasoning_tokens\" field overrides; "
                          "default: 0, none)")
    net.add_argument("--workdir", default=None,
                     help="directory for the repository and tritonserver.log, kept after exit (default: a temporary "
                          "one, removed on a clean exit)")
    net.add_argument("--tritonserver", default=None,
                     help="tritonserver binary (default: $LOADGEN_TRITONSERVER, else the one in nvidia-pytriton)")
    net.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for readiness (default: 60)")
    net.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level (default: 0)")
    trt = parser.add_argument_group("TensorRT-LLM repository for a real GPU")
    trt.add_argument("--trtllm-engine", metavar="DIR", default=None, help="engine directory built by trtllm-build")
    trt.add_argument("--tokenizer-dir", metavar="DIR", default=None, help="HuggingFace tokenizer directory")
    trt.add_argument("--out", metavar="REPO", default=None, help="model repository to write")
    trt.add_argument("--trtllm-models", metavar="DIR", default=None,
                     help="tensorrtllm_backend's all_models/inflight_batcher_llm (copies its preprocessing, "
                          "postprocessing and tensorrt_llm_bls model.py files)")
    trt.add_argument("--instances", type=int, default=1,
                     help="tensorrt_llm instance_group count (replicas in one server; default: 1)")
    trt.add_argument("--kv-cache-free-gpu-mem-fraction", type=float, default=0.9,
                     help="kv_cache_free_gpu_mem_fraction (default: 0.9)")
    trt.add_argument("--max-tokens-in-paged-kv-cache", type=int, default=None,
                     help="fixed KV-cache size per instance in tokens (equal shares for replicas on one GPU)")
    trt.add_argument("--batch-scheduler-policy", default="max_utilization",
                     choices=["max_utilization", "guaranteed_no_evict"], help="default: max_utilization")
    trt.add_argument("--docker", metavar="TAG", default=None,
                     help="run in nvcr.io/nvidia/tritonserver:TAG-trtllm-python-py3 (e.g. 24.12)")
    mode = trt.add_mutually_exclusive_group()
    mode.add_argument("--print-command", action="store_true", help="print the server command (default)")
    mode.add_argument("--run", action="store_true", help="run the server command in the foreground")


def server_settings(args: argparse.Namespace) -> Any:
    """The ``[server]`` section of the scenario from the flags given (one-line errors naming the flag)."""
    from loadgen.scenario.check import _check_choices, build
    from loadgen.scenario.flags import overlay_from_args

    sc = build({"server": overlay_from_args(args, sections=["server"]).get("server", {})})
    _check_choices(sc)  # --server-prefix-cache on|off, --mps on|off, ...
    return sc.server


def execute(args: argparse.Namespace) -> int:
    trt_only = ("tokenizer_dir", "out", "trtllm_models", "docker")
    if args.trtllm_engine is None and (any(getattr(args, k) for k in trt_only) or args.run or args.print_command):
        raise UsageError("--tokenizer-dir/--out/--trtllm-models/--docker/--run/--print-command need --trtllm-engine DIR")
    if args.trtllm_engine is not None:
        return _execute_trtllm(args)
    return _serve_emulated(args)


def _serve_emulated(args: argparse.Namespace) -> int:
    from loadgen.serve.launcher import EmbeddedServer, ServerConfig

    srv = server_settings(args)
    cfg = ServerConfig(
        model_name=args.model_name, profile=srv.model, gpu=srv.gpu, max_batch=srv.max_batch,
        replicas=srv.replicas, speed=srv.speed, gpu_memory_fraction=args.gpu_memory_fraction,
        mps=srv.mps == "on", spread=srv.spread, replica_memory=srv.replica_memory,
        prefix_cache=srv.prefix_cache == "on", kv_block_tokens=srv.kv_block_tokens,
        http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        http_address=args.http_address or args.address, grpc_address=args.grpc_address or args.address,
        metrics_address=args.metrics_address or args.address, metrics_interval_ms=args.metrics_interval_ms,
        workdir=args.workdir, tritonserver=args.tritonserver, log_verbose=args.log_verbose,
    )
    if args.openai_reasoning_tokens < 0:
        raise UsageError(f"--openai-reasoning-tokens {args.openai_reasoning_tokens} is invalid: use 0 (none) or a "
                         "number of tokens")
    server = EmbeddedServer(cfg)
    frontend = None
    # SIGTERM (kill, service managers) and SIGHUP (terminal closed) stop the server as cleanly as Ctrl-C.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        server.start(timeout=args.startup_timeout)
        name = cfg.model_name
        print(f"loadgen serve: ready in {server.startup_s:.1f} s: emulated {cfg.profile} on {cfg.gpu}, "
              f"{cfg.replicas} replica(s), max batch {cfg.max_batch}, speed {cfg.speed:g}"
              + (f", MPS {srv.mps}, spread {cfg.spread}" if cfg.replicas > 1 else "") + f" (pid {server.pid})")
        print(f"  HTTP     {server.http_url}/v2/models/{name}/generate_stream")
        print(f"  gRPC     {server.grpc_url}  (model {name}, stream_infer)")
        print(f"  metrics  {server.metrics_url}")
        print(f"  log      {server.log_path}")
        if args.openai_port is not None:
            from loadgen.serve.openai_frontend import FrontendThread

            served = args.served_model_name or cfg.profile
            frontend = FrontendThread(server.http_url, name, served, host=args.address,
                                      port=args.openai_port,
                                      reasoning_tokens=args.openai_reasoning_tokens).start()
            print(f"  OpenAI   {frontend.url}/v1/chat/completions  (model {served})")
        print("Ctrl-C to stop.", flush=True)
        while server.running:
            time.sleep(0.5)
        raise TargetError(f"tritonserver exited unexpectedly with code {server.returncode}; log {server.log_path}: "
                          f"{server.log_tail()}")
    except KeyboardInterrupt:
        print("loadgen serve: stopping...", file=sys.stderr, flush=True)
        return 0
    finally:
        if frontend is not None:
            frontend.stop()
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _execute_trtllm(args: argparse.Namespace) -> int:
    from loadgen.serve.trtllm import TrtllmOptions, run_command, trtllm_command, write_trtllm_repository

    missing = [flag for flag, value in (("--tokenizer-dir", args.tokenizer_dir), ("--out", args.out)) if not value]
    if missing:
        raise UsageError(f"--trtllm-engine needs {' and '.join(missing)}")
    opts = TrtllmOptions(
        engine_dir=args.trtllm_engine, tokenizer_dir=args.tokenizer_dir, out=args.out,
        max_batch=server_settings(args).max_batch, instances=args.instances,
        kv_cache_free_gpu_mem_fraction=args.kv_cache_free_gpu_mem_fraction,
        batch_scheduler_policy=args.batch_scheduler_policy, trtllm_models=args.trtllm_models,
        max_tokens_in_paged_kv_cache=args.max_tokens_in_paged_kv_cache,
        enable_kv_cache_reuse=server_settings(args).prefix_cache == "on",
        docker_tag=args.docker, http_port=args.http_port or 8000, grpc_port=args.grpc_port or 8001,
        metrics_port=args.metrics_port or 8002, address=args.address, tritonserver=args.tritonserver,
    )
    repo, notes = write_trtllm_repository(opts)
    cmd = trtllm_command(opts)
    print(f"loadgen serve: wrote TensorRT-LLM model repository {repo}")
    for note in notes:
        print(f"  note: {note}")
    if not args.run:
        print(" ".join(_quote(c) for c in cmd))
        return 0
    return run_command(cmd)


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)
