"""TensorRT-LLM model repositories for real GPUs: fill the templates in ``servers/tensorrt_llm/`` and say how to run.

The repository has the usual five models: ``ensemble`` (preprocessing -> tensorrt_llm -> postprocessing) and
``tensorrt_llm_bls`` (the same string interface in one Python model). Only the configurations are ours; the Python
models' ``model.py`` files belong to the ``tensorrtllm_backend`` release that matches the server container, so they
are copied from a checkout given with ``--trtllm-models`` (its ``all_models/inflight_batcher_llm``), or the user is
told to copy them. ``tensorrt_llm`` itself is the C++ backend and needs only an empty version directory.

The command is either ``tritonserver ...`` (inside the TensorRT-LLM container, or anywhere tritonserver has the
tensorrtllm backend) or ``docker run ... nvcr.io/nvidia/tritonserver:<tag>-trtllm-python-py3 tritonserver ...``;
with docker the configurations name the container-side mount points, not the host paths.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template

from loadgen.errors import UsageError
from loadgen.serve.repository import servers_dir

MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls")
PYTHON_MODELS = ("preprocessing", "postprocessing", "tensorrt_llm_bls")
SCHEDULER_POLICIES = ("max_utilization", "guaranteed_no_evict")
IMAGE = "nvcr.io/nvidia/tritonserver"
# Mount points inside the container (docker mode).
C_REPO, C_ENGINE, C_TOKENIZER = "/models", "/engines/engine", "/tokenizer"


@dataclass
class TrtllmOptions:
    """The few choices that matter for the study's experiments; everything else keeps TensorRT-LLM's defaults."""

    engine_dir: str
    tokenizer_dir: str
    out: str
    max_batch: int = 256  # Triton max_batch_size of every model (= the engine's max batch)
    instances: int = 1  # tensorrt_llm instance_group count
    kv_cache_free_gpu_mem_fraction: float = 0.9
    batch_scheduler_policy: str = "max_utilization"
    decoupled: bool = True  # streaming
    max_queue_delay_us: int = 0
    exclude_input_in_output: bool = True
    enable_kv_cache_reuse: bool = False  # prefix caching; `loadgen serve --server-prefix-cache on|off` sets it
    enable_chunked_context: bool = False
    max_tokens_in_paged_kv_cache: int | None = None
    preprocessing_instances: int = 1
    postprocessing_instances: int = 1
    bls_instances: int = 1
    accumulate_tokens: bool = False
    trtllm_models: str | None = None  # tensorrtllm_backend/all_models/inflight_batcher_llm
    docker_tag: str | None = None  # e.g. "24.12" -> nvcr.io/nvidia/tritonserver:24.12-trtllm-python-py3
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    address: str = "127.0.0.1"
    tritonserver: str | None = None  # native mode: the binary (default: tritonserver on PATH)

    def validate(self) -> None:
        engine = Path(self.engine_dir)
        if not engine.is_dir():
            raise UsageError(f"--trtllm-engine {self.engine_dir}: not a directory; build an engine with "
                             "trtllm-build (see servers/README.md)")
        if not any(engine.glob("*.engine")):
            raise UsageError(f"--trtllm-engine {self.engine_dir} has no *.engine file: point it at trtllm-build's "
                             "--output_dir")
        if not Path(self.tokenizer_dir).is_dir():
            raise UsageError(f"--tokenizer-dir {self.tokenizer_dir}: not a directory; use the HuggingFace model "
                             "directory that holds tokenizer.json / tokenizer_config.json")
        for flag, value in (("--max-batch", self.max_batch), ("--instances", self.instances)):
            if int(value) != value or value < 1:
                raise UsageError(f"{flag} {value!r} is invalid: use 1 or more")
        if self.max_tokens_in_paged_kv_cache is not None and self.max_tokens_in_paged_kv_cache < 1:
            raise UsageError(f"--max-tokens-in-paged-kv-cache {self.max_tokens_in_paged_kv_cache} is invalid: use "
                             "a positive number of tokens")
        if not 0 < self.kv_cache_free_gpu_mem_fraction <= 1:
            raise UsageError(f"--kv-cache-free-gpu-mem-fraction {self.kv_cache_free_gpu_mem_fraction} is invalid: "
                             "use a value in (0, 1]")
        if self.batch_scheduler_policy not in SCHEDULER_POLICIES:
            raise UsageError(f"--batch-scheduler-policy {self.batch_scheduler_policy!r} is invalid: use one of "
                             f"{', '.join(SCHEDULER_POLICIES)}")
        for flag, port in (("--http-port", self.http_port), ("--grpc-port", self.grpc_port),
                           ("--metrics-port", self.metrics_port)):
            if not 0 < port < 65536:
                raise UsageError(f"{flag} {port} is invalid for a TensorRT-LLM server: use 1-65535")
        if self.trtllm_models is not None:
            missing = [f"{m}/1/model.py" for m in PYTHON_MODELS
                       if not (Path(self.trtllm_models) / m / "1" / "model.py").is_file()]
            if missing:
                raise UsageError(f"--trtllm-models {self.trtllm_models} lacks {', '.join(missing)}: point it at "
                                 "tensorrtllm_backend/all_models/inflight_batcher_llm")


def _b(value: bool) -> str:
    return "true" if value else "false"


def template_values(opts: TrtllmOptions) -> dict[str, str]:
    """Placeholder values; paths are the container's mount points in docker mode."""
    docker = opts.docker_tag is not None
    return {
        "max_batch": str(int(opts.max_batch)),
        "instances": str(int(opts.instances)),
        "decoupled": _b(opts.decoupled),
        "max_queue_delay_us": str(int(opts.max_queue_delay_us)),
        "engine_dir": C_ENGINE if docker else str(Path(opts.engine_dir).resolve()),
        "tokenizer_dir": C_TOKENIZER if docker else str(Path(opts.tokenizer_dir).resolve()),
        "kv_cache_free_gpu_mem_fraction": repr(float(opts.kv_cache_free_gpu_mem_fraction)),
        "batch_scheduler_policy": opts.batch_scheduler_policy,
        "max_tokens_in_paged_kv_cache": "" if opts.max_tokens_in_paged_kv_cache is None
        else str(int(opts.max_tokens_in_paged_kv_cache)),
        "enable_kv_cache_reuse": _b(opts.enable_kv_cache_reuse),
        "enable_chunked_context": _b(opts.enable_chunked_context),
        "exclude_input_in_output": _b(opts.exclude_input_in_output),
        "preprocessing_instances": str(int(opts.preprocessing_instances)),
        "postprocessing_instances": str(int(opts.postprocessing_instances)),
        "bls_instances": str(int(opts.bls_instances)),
        "accumulate_tokens": _b(opts.accumulate_tokens),
        "add_special_tokens": "false",
    }


def write_trtllm_repository(opts: TrtllmOptions) -> tuple[Path, list[str]]:
    """Write the five models under ``opts.out``; returns (repository, notes for the user)."""
    opts.validate()
    src = servers_dir() / "tensorrt_llm"
    out = Path(opts.out).resolve()
    values = template_values(opts)
    notes: list[str] = []
    for name in MODELS:
        model_dir = out / name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        (model_dir / "1").mkdir(parents=True)
        text = Template((src / name / "config.pbtxt.template").read_text()).substitute(values)
        (model_dir / "config.pbtxt").write_text(text)
        if name in PYTHON_MODELS and opts.trtllm_models is not None:
            shutil.copy2(Path(opts.trtllm_models) / name / "1" / "model.py", model_dir / "1" / "model.py")
    if opts.trtllm_models is None:
        notes.append("no --trtllm-models given: copy model.py of " + ", ".join(PYTHON_MODELS) + " from "
                     "tensorrtllm_backend/all_models/inflight_batcher_llm/<model>/1/ (the release matching your "
                     f"container) into {out}/<model>/1/")
    if opts.enable_kv_cache_reuse:
        notes.append("KV-cache reuse (prefix caching) is on: the engine must be built with trtllm-build "
                     "--use_paged_context_fmha enable (--server-prefix-cache off turns it off)")
    if opts.instances > 1:
        notes.append(f"{opts.instances} tensorrt_llm instances share the GPU; start the MPS daemon first for "
                     "concurrent kernels (see servers/README.md)")
    return out, notes


def trtllm_command(opts: TrtllmOptions) -> list[str]:
    """The command that serves the written repository on the chosen ports (native or docker)."""
    ports = ["--http-port", str(opts.http_port), "--grpc-port", str(opts.grpc_port),
             "--metrics-port", str(opts.metrics_port)]
    if opts.docker_tag is None:
        server = opts.tritonserver or "tritonserver"
        return [server, "--model-repository", str(Path(opts.out).resolve()),
                "--http-address", opts.address, "--grpc-address", opts.address,
                "--metrics-address", opts.address, *ports]
    host = opts.address
    return [
        "docker", "run", "--rm", "--gpus", "all", "--shm-size", "2g", "--ulimit", "memlock=-1",
        "-p", f"{host}:{opts.http_port}:{opts.http_port}", "-p", f"{host}:{opts.grpc_port}:{opts.grpc_port}",
        "-p", f"{host}:{opts.metrics_port}:{opts.metrics_port}",
        "-v", f"{Path(opts.out).resolve()}:{C_REPO}",
        "-v", f"{Path(opts.engine_dir).resolve()}:{C_ENGINE}:ro",
        "-v", f"{Path(opts.tokenizer_dir).resolve()}:{C_TOKENIZER}:ro",
        f"{IMAGE}:{opts.docker_tag}-trtllm-python-py3",
        "tritonserver", "--model-repository", C_REPO, *ports,
    ]


def run_command(cmd: list[str]) -> int:
    """Run the server in the foreground (Ctrl-C reaches it: same process group); its exit code."""
    try:
        proc = subprocess.Popen(cmd)
    except FileNotFoundError:
        raise UsageError(f"{cmd[0]} not found on PATH: run inside the TensorRT-LLM Triton container, pass "
                         "--tritonserver PATH, or use --docker TAG") from None
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

