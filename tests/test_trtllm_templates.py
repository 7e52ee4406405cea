"""TensorRT-LLM repository templates: every generated config parses as a Triton ModelConfig, the ensemble is wired
consistently, the chosen options land in the right parameters, and the launch commands are right."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from loadgen.cli import main as cli_main
from loadgen.errors import UsageError
from loadgen.serve.trtllm import MODELS, TrtllmOptions, trtllm_command, write_trtllm_repository


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    engine = tmp_path / "engines" / "opt-1.3b"
    engine.mkdir(parents=True)
    (engine / "config.json").write_text("{}")
    (engine / "rank0.engine").write_bytes(b"\0")
    tok = tmp_path / "hf" / "opt-1.3b"
    tok.mkdir(parents=True)
    (tok / "tokenizer_config.json").write_text("{}")
    models = tmp_path / "tensorrtllm_backend" / "all_models" / "inflight_batcher_llm"
    for name in ("preprocessing", "postprocessing", "tensorrt_llm_bls"):
        (models / name / "1").mkdir(parents=True)
        (models / name / "1" / "model.py").write_text(f"# {name} model from tensorrtllm_backend\n")
    return {"engine": engine, "tok": tok, "models": models, "out": tmp_path / "repo"}


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def params(cfg: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def test_every_config_parses_and_options_land(dirs: dict[str, Path]) -> None:
    opts = TrtllmOptions(engine_dir=str(dirs["engine"]), tokenizer_dir=str(dirs["tok"]), out=str(dirs["out"]),
                         max_batch=512, instances=2, kv_cache_free_gpu_mem_fraction=0.45,
                         batch_scheduler_policy="guaranteed_no_evict", trtllm_models=str(dirs["models"]))
    repo, notes = write_trtllm_repository(opts)
    cfgs = {name: parse(repo / name / "config.pbtxt") for name in MODELS}
    assert {c.name for c in cfgs.values()} == set(MODELS)
    assert all(c.max_batch_size == 512 for c in cfgs.values())
    trt = cfgs["tensorrt_llm"]
    p = params(trt)
    assert trt.backend == "tensorrtllm" and trt.model_transaction_policy.decoupled
    assert p["gpt_model_type"] == "inflight_fused_batching"
    assert p["gpt_model_path"] == str(dirs["engine"].resolve())
    assert p["batch_scheduler_policy"] == "guaranteed_no_evict"
    assert float(p["kv_cache_free_gpu_mem_fraction"]) == 0.45
    assert [g.count for g in trt.instance_group] == [2]
    assert params(cfgs["preprocessing"])["tokenizer_dir"] == str(dirs["tok"].resolve())
    assert params(cfgs["postprocessing"])["tokenizer_dir"] == str(dirs["tok"].resolve())
    bls = cfgs["tensorrt_llm_bls"]
    assert bls.model_transaction_policy.decoupled and params(bls)["tensorrt_llm_model_name"] == "tensorrt_llm"
    assert cfgs["ensemble"].platform == "ensemble"
    for name in ("preprocessing", "postprocessing", "tensorrt_llm_bls"):
        assert (repo / name / "1" / "model.py").read_text().startswith(f"# {name} model")
    assert (repo / "tensorrt_llm" / "1").is_dir() and not list((repo / "tensorrt_llm" / "1").iterdir())
    assert any("MPS" in n for n in notes) and not any("copy model.py" in n for n in notes)


def test_ensemble_wiring_is_consistent(dirs: dict[str, Path]) -> None:
    opts = TrtllmOptions(engine_dir=str(dirs["engine"]), tokenizer_dir=str(dirs["tok"]), out=str(dirs["out"]))
    repo, notes = write_trtllm_repository(opts)
    assert any("copy model.py" in n for n in notes)
    cfgs = {name: parse(repo / name / "config.pbtxt") for name in MODELS}
    ens = cfgs["ensemble"]
    available = {i.name for i in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = cfgs[step.model_name]
        inputs = {i.name: i for i in model.input}
        outputs = {o.name for o in model.output}
        for key, value in step.input_map.items():
            assert key in inputs, f"{step.model_name} has no input {key}"
            assert value in available, f"{step.model_name}.{key} reads {value}, which nothing produced before"
        required = {n for n, i in inputs.items() if not i.optional}
        assert required <= set(step.input_map), f"{step.model_name} misses {required - set(step.input_map)}"
        for key, value in step.output_map.items():
            assert key in outputs, f"{step.model_name} has no output {key}"
            available.add(value)
    assert {o.name for o in ens.output} <= available
    # the string interface matches the emulated model's for what both declare
    assert {"text_input", "max_tokens", "stream", "min_tokens", "seed"} <= {i.name for i in ens.input}
    assert {i.name for i in cfgs["tensorrt_llm_bls"].input} >= {"text_input", "max_tokens", "stream"}


def test_native_command(dirs: dict[str, Path]) -> None:
    opts = TrtllmOptions(engine_dir=str(dirs["engine"]), tokenizer_dir=str(dirs["tok"]), out=str(dirs["out"]),
                         http_port=9000, grpc_port=9001, metrics_port=9002)
    cmd = trtllm_command(opts)
    assert cmd[0] == "tritonserver"
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert flags["--model-repository"] == str(dirs["out"].resolve())
    assert (flags["--http-port"], flags["--grpc-port"], flags["--metrics-port"]) == ("9000", "9001", "9002")
    assert flags["--http-address"] == flags["--grpc-address"] == flags["--metrics-address"] == "127.0.0.1"


def test_docker_command_and_container_paths(dirs: dict[str, Path]) -> None:
    opts = TrtllmOptions(engine_dir=str(dirs["engine"]), tokenizer_dir=str(dirs["tok"]), out=str(dirs["out"]),
                         docker_tag="24.12", http_port=8100)
    repo, _ = write_trtllm_repository(opts)
    cmd = trtllm_command(opts)
    assert cmd[:3] == ["docker", "run", "--rm"] and "--gpus" in cmd
    image = cmd.index("nvcr.io/nvidia/tritonserver:24.12-trtllm-python-py3")
    assert cmd[image + 1:image + 4] == ["tritonserver", "--model-repository", "/models"]
    assert "127.0.0.1:8100:8100" in cmd and cmd[cmd.index("--http-port") + 1] == "8100"
    mounts = [cmd[i + 1] for i, c in enumerate(cmd) if c == "-v"]
    assert f"{dirs['out'].resolve()}:/models" in mounts
    assert f"{dirs['engine'].resolve()}:/engines/engine:ro" in mounts
    assert f"{dirs['tok'].resolve()}:/tokenizer:ro" in mounts
    assert params(parse(repo / "tensorrt_llm" / "config.pbtxt"))["gpt_model_path"] == "/engines/engine"
    assert params(parse(repo / "preprocessing" / "config.pbtxt"))["tokenizer_dir"] == "/tokenizer"


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"engine_dir": "/nonexistent/engine"}, r"--trtllm-engine /nonexistent/engine: not a directory"),
        ({"tokenizer_dir": "/nonexistent/tok"}, r"--tokenizer-dir /nonexistent/tok: not a directory"),
        ({"batch_scheduler_policy": "fifo"}, r"--batch-scheduler-policy 'fifo' is invalid"),
        ({"kv_cache_free_gpu_mem_fraction": 1.5}, r"--kv-cache-free-gpu-mem-fraction 1.5 is invalid"),
        ({"instances": 0}, r"--instances 0 is invalid"),
        ({"trtllm_models": "/nonexistent/all_models"}, r"--trtllm-models /nonexistent/all_models lacks "
                                                        r"preprocessing/1/model.py, postprocessing/1/model.py"),
    ],
)
def test_wrong_options(dirs: dict[str, Path], change: dict, pattern: str) -> None:
    base = dict(engine_dir=str(dirs["engine"]), tokenizer_dir=str(dirs["tok"]), out=str(dirs["out"]))
    with pytest.raises(UsageError, match=pattern):
        write_trtllm_repository(TrtllmOptions(**{**base, **change}))


def test_engine_dir_without_engine(dirs: dict[str, Path]) -> None:
    (dirs["engine"] / "rank0.engine").unlink()
    with pytest.raises(UsageError, match=r"has no \*\.engine file"):
        write_trtllm_repository(TrtllmOptions(engine_dir=str(dirs["engine"]), tokenizer_dir=str(dirs["tok"]),
                                              out=str(dirs["out"])))


def test_cli_prints_the_command(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["serve", "--trtllm-engine", str(dirs["engine"]), "--tokenizer-dir", str(dirs["tok"]),
                   "--out", str(dirs["out"]), "--server-max-batch", "96", "--instances", "2", "--http-port", "8500",
                   "--max-tokens-in-paged-kv-cache", "200000", "--print-command"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and out[0].startswith("loadgen serve: wrote TensorRT-LLM model repository")
    cmd = shlex.split(out[-1])
    assert cmd[0] == "tritonserver" and cmd[cmd.index("--http-port") + 1] == "8500"
    trt = parse(dirs["out"] / "tensorrt_llm" / "config.pbtxt")
    assert trt.max_batch_size == 96 and [g.count for g in trt.instance_group] == [2]
    assert params(trt)["max_tokens_in_paged_kv_cache"] == "200000"
    assert cli_main(["serve", "--trtllm-engine", str(dirs["engine"]), "--out", str(dirs["out"])]) == 2
    assert "needs --tokenizer-dir" in capsys.readouterr().err
