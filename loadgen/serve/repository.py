"""Filling the emulated model repository: one decoupled Python model that hosts the emulated SLM engine, and its
one-response sibling for the clients that cannot use a decoupled model.

The templates live in ``servers/emulated/`` (in a wheel: ``loadgen/_servers/emulated/``), one directory per model:
``config.pbtxt.template`` with ``${...}`` placeholders and ``1/model.py``. ``ensemble/`` is the engine (decoupled,
so it can stream); ``infer/`` is ``<model_name>_infer``, which forwards each request to it and answers once,
because KServe ``/infer`` rejects decoupled models. Filling validates everything the model would otherwise fail on
at load time (unknown model or GPU profile, a max batch that does not fit in the emulated memory), so that a bad
flag is one clear line here instead of a stack trace in the server log.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from string import Template

from loadgen.codecs.probe import INFER_SIBLING_SUFFIX
from loadgen.emulator.spread import check_spread
from loadgen.errors import UsageError

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
TEMPLATE_MODEL = "ensemble"
INFER_TEMPLATE = "infer"


def servers_dir() -> Path:
    """The ``servers/`` tree: beside the package in a checkout, inside it (``_servers``) in a wheel."""
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "_servers", here.parent / "servers"):
        if (cand / "emulated").is_dir():
            return cand
    raise UsageError(f"the servers/ templates are missing (looked in {here / '_servers'} and {here.parent / 'servers'}):"
                     " reinstall slm-loadgen")


@dataclass(frozen=True)
class EmulatedModelSpec:
    """What the emulated model repository is filled with."""

    model_name: str = "ensemble"  # the Triton model name clients address
    profile: str = "opt-1.3b"  # emulated model profile (loadgen.emulator.profiles)
    gpu: str = "h100-64gb"  # emulated GPU profile
    max_batch: int = 256  # engine max running batch (per replica)
    replicas: int = 1  # Triton instance_group count: independent engines on the one emulated GPU
    speed: float = 1.0  # < 1 runs the emulated GPU slower than real time
    gpu_memory_fraction: float = 0.9  # share of the GPU memory for weights + KV cache, all replicas together
    mps: bool = True  # replicas share the emulated GPU as under NVIDIA MPS (False: time slicing)
    spread: str = "even"  # requests over replicas: even (round robin) or triton (Triton's instance choice)
    replica_memory: float | None = None  # share of that budget each replica gets (default 1 / replicas)
    prefix_cache: bool = False  # automatic prefix caching in the engines (--server-prefix-cache on)
    kv_block_tokens: int = 16  # KV block size, the prefix cache's unit
    metrics_interval_ms: int = 100
    infer_model: bool = True  # also serve <model_name>_infer, the one-response sibling (KServe /infer)

    @property
    def effective_memory_fraction(self) -> float:
        """The GPU memory fraction that gives each replica ``replica_memory`` of the budget (the emulator splits
        its fraction evenly over the replicas)."""
        if self.replica_memory is None:
            return float(self.gpu_memory_fraction)
        return float(self.gpu_memory_fraction) * float(self.replica_memory) * int(self.replicas)

    @property
    def infer_model_name(self) -> str:
        return self.model_name + INFER_SIBLING_SUFFIX

    def served_models(self) -> list[str]:
        """Every model the repository holds (what the launcher waits for)."""
        return [self.model_name, self.infer_model_name] if self.infer_model else [self.model_name]

    def validate(self) -> None:
        """UsageError (one line, naming the flag) for anything the model would fail on inside the server."""
        from loadgen.emulator.profiles import check_batch_fits, get_gpu, get_model

        if not MODEL_NAME_RE.match(self.model_name):
            raise UsageError(f"--model-name {self.model_name!r} is invalid: use letters, digits, '_', '.', '-'")
        if int(self.replicas) != self.replicas or self.replicas < 1:
            raise UsageError(f"--replicas {self.replicas!r} is invalid: use 1 or more")
        if not self.speed > 0:
            raise UsageError(f"--speed {self.speed!r} is invalid: use a positive factor (1 = real time, "
                             "0.5 = emulated GPU twice as slow)")
        check_spread(self.spread)
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise UsageError(f"--gpu-memory-fraction {self.gpu_memory_fraction!r} is invalid: use a share in (0, 1]")
        if self.replica_memory is not None and not (
                0.0 < self.replica_memory and self.replica_memory * self.replicas <= 1.0 + 1e-9):
            raise UsageError(f"--server-replica-memory {self.replica_memory!r} is invalid for {self.replicas} "
                             f"replica(s): use a share of the memory budget in (0, {1 / self.replicas:.4g}] "
                             "(the replicas' shares cannot add up to more than the budget)")
        if int(self.kv_block_tokens) != self.kv_block_tokens or not 1 <= self.kv_block_tokens <= 1024:
            raise UsageError(f"--server-kv-block-tokens {self.kv_block_tokens!r} is invalid: use 1 to 1024 tokens")
        if self.metrics_interval_ms < 10:
            raise UsageError(f"metrics interval {self.metrics_interval_ms} ms is too short: use 10 ms or more")
        model, gpu = get_model(self.profile), get_gpu(self.gpu)
        check_batch_fits(model, gpu, self.max_batch, self.replicas, self.effective_memory_fraction)


def _fill(src: Path, model_dir: Path, **values: object) -> None:
    """Copy a template directory's ``1/*.py`` and fill its ``config.pbtxt.template`` into ``model_dir``."""
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    for item in (src / "1").iterdir():
        if item.is_file() and item.suffix == ".py":
            shutil.copy2(item, model_dir / "1" / item.name)
    text = Template((src / "config.pbtxt.template").read_text()).substitute(**values)
    (model_dir / "config.pbtxt").write_text(text)


def write_emulated_repository(spec: EmulatedModelSpec, dest: str | os.PathLike[str],
                              shared_gpu_path: str | os.PathLike[str]) -> Path:
    """Create ``dest/<model_name>/{config.pbtxt,1/model.py}`` (and the ``<model_name>_infer`` sibling); returns
    ``dest``.

    ``shared_gpu_path`` is the file through which the replicas (separate processes) share one emulated GPU; it
    must be fresh for each server start.
    """
    spec.validate()
    templates = servers_dir() / "emulated"
    root = Path(dest)
    _fill(templates / TEMPLATE_MODEL, root / spec.model_name,
          model_name=spec.model_name,
          max_batch_size=int(spec.max_batch),
          replicas=int(spec.replicas),
          profile=spec.profile,
          gpu=spec.gpu,
          max_batch=int(spec.max_batch),
          speed=repr(float(spec.speed)),
          gpu_memory_fraction=repr(spec.effective_memory_fraction),
          mps="on" if spec.mps else "off",
          spread=spec.spread,
          prefix_cache="on" if spec.prefix_cache else "off",
          kv_block_tokens=int(spec.kv_block_tokens),
          shared_gpu_path=str(shared_gpu_path),
          metrics_interval_ms=int(spec.metrics_interval_ms))
    if spec.infer_model:
        # One forwarding thread per request in flight: every request the engines can run, and more waiting
        # (beyond that they would queue in the sibling instead of the engine, hiding the engine's queue).
        _fill(templates / INFER_TEMPLATE, root / spec.infer_model_name,
              model_name=spec.infer_model_name, target_model=spec.model_name, max_batch_size=int(spec.max_batch),
              max_in_flight=max(1024, 4 * int(spec.max_batch) * int(spec.replicas)))
    return root
