"""The Accelerator a trial runs with, in the distributed mode its launch asked for.

``accelerate launch`` tells the ranks what the config file says through the environment
(``ACCELERATE_USE_FSDP``, ``FSDP_*``, ``ACCELERATE_USE_DEEPSPEED``, ``ACCELERATE_DYNAMO_*``).
Accelerate (1.15) selects FSDP and DeepSpeed only on an accelerator: on CPU it runs the same ranks as
plain DDP (``MULTI_CPU``) without a word. lbsearch never lets that pass silently:

- FSDP version 2 on CPU runs as FSDP: torch's ``fully_shard`` works over gloo, so the Accelerator is
  switched to Accelerate's own FSDP2 path (the state Accelerate would have set on a GPU);
- FSDP version 1 on CPU: Accelerate refuses it while building its plugin ("There are currently no
  available devices found, ..."); the trial fails saying so and what to change;
- DeepSpeed (ZeRO stage 1 or 2) on CPU runs as DeepSpeed: its CPU accelerator (``DS_ACCELERATOR=cpu``) over the
  same gloo process group, so the Accelerator is switched to Accelerate's DeepSpeed path as for FSDP version 2.
  DeepSpeed builds its shared-memory collective (a C++ extension: g++ with OpenMP, and ninja) on first use.
  Without ``deepspeed`` installed, ``accelerate launch`` fails the trial saying so.

Under DeepSpeed the engine steps inside ``accelerator.backward`` of a step's last micro-batch: the clipping
at ``train.clip_norm``, the optimizer step (which DeepSpeed skips where the gradient norm is not finite, in
fp32 and fp16) and the zeroing of the gradients. lbsearch's optimizer goes in unchanged and its schedule stays
lbsearch's, stepped after the engine's step (``prepare``), so lr, warmup and clipping are those of DDP. The
divergence guard sees a step only once the engine has taken it: a diverged step's update is applied, and the
trial stops there as diverged all the same.

A config file that sets ``dynamo_config`` is honoured: ``launcher.compile`` then adds nothing.
"""


from __future__ import annotations

import os
from pathlib import Path

import torch

from lbsearch.spec import CPUS, GPUS, THREADS

__all__ = ["keep_until_exit", "make_accelerator", "prepare"]

_NEVER_FREED: list = []


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def make_accelerator(precision: str, cpu: bool, compile: bool, cache: Path | None = None):
    """The trial's Accelerator. ``cpu``: forced to the CPU (``launcher.cpu``; also when no GPU is present).
    ``cache``: where compiled code is kept for the next trials (``TORCHINDUCTOR_CACHE_DIR``, unless set)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, TorchDynamoPlugin

    cpu = cpu or not torch.cuda.is_available()
    from_file = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "NO").upper() != "NO"
    if (compile or from_file) and cache is not None:  # inductor's FX-graph and autotuning caches: a later trial loads, not compiles
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    dynamo = TorchDynamoPlugin(backend="inductor", use_regional_compilation=True, dynamic=True) if compile and not from_file else None
    fsdp, version = _flag("ACCELERATE_USE_FSDP"), os.environ.get("FSDP_VERSION", "1")
    if fsdp and cpu and version != "2":
        raise RuntimeError("FSDP version 1 cannot run on CPU: Accelerate refuses it (\"There are currently no available devices "
                           "found, must be one of 'XPU', 'CUDA', ...\"); set `fsdp_version: 2` in the accelerate config, or run on a GPU")
    deepspeed = _flag("ACCELERATE_USE_DEEPSPEED")
    if deepspeed and cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported: a GPU's presence must not pull its engine there
    # cpu=True also selects Accelerate's multi-CPU (gloo) mode when torchrun started several ranks
    acc = Accelerator(mixed_precision=precision, cpu=cpu, dynamo_plugin=dynamo)
    if fsdp and acc.distributed_type != DistributedType.FSDP:
        _fsdp2_on_cpu(acc)
    if deepspeed and acc.distributed_type != DistributedType.DEEPSPEED:
        _deepspeed_on_cpu(acc)
    return acc


def _fsdp2_on_cpu(acc) -> None:
    """What ``AcceleratorState`` does for FSDP on a GPU (its FSDP branch covers accelerator devices only)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* environment, as Accelerate builds it
    if acc.state.mixed_precision != "no":
        plugin.set_mixed_precision(acc.state.mixed_precision)
    acc.state.fsdp_plugin = plugin
    acc.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def _deepspeed_on_cpu(acc) -> None:
    """What ``AcceleratorState`` does for DeepSpeed on a GPU (its DeepSpeed branch is skipped for ``cpu``). DeepSpeed
    takes the precision from its config: the plugin gets the trial's, Accelerate's own autocast stays off."""
    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    plugin = DeepSpeedPlugin()  # from the ACCELERATE_DEEPSPEED_* environment (the config file), as Accelerate builds it
    plugin.set_mixed_precision(acc.state.mixed_precision)
    plugin.select(_from_accelerator_state=True)
    acc.state.deepspeed_plugins = plugin
    acc.state._mixed_precision, acc.native_amp = "no", False
    acc.state.distributed_type = DistributedType.DEEPSPEED
    PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED


def prepare(acc, model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batch: int, clip_norm: float | None):
    """``acc.prepare(model, optimizer)``; under DeepSpeed, the trial's batch split and clipping written into its config
    first (the file leaves them to lbsearch: ``lbsearch.spec.accelerate_file``). The optimizer is lbsearch's own, its
    schedule is not prepared (DeepSpeed would step it itself), so lr, warmup and clipping are those of DDP."""
    if acc.distributed_type == "DEEPSPEED":
        config = acc.state.deepspeed_plugin.deepspeed_config
        accumulation = acc.gradient_accumulation_steps
        config |= {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": accumulation,
                   "train_batch_size": micro_batch * accumulation * acc.num_processes, "gradient_clipping": clip_norm or 0.0}
    return acc.prepare(model, optimizer)


def placement(device: torch.device) -> dict[str, str]:
    """Where rank 0 runs, as MLflow tags: its CPU cores (its affinity, e.g. ``0-3``) and torch's threads, and the
    GPUs it may use (``CUDA_VISIBLE_DEVICES``). ``reproduce`` runs with the same thread count (CPU sums depend on it)."""
    cores = sorted(os.sched_getaffinity(0))
    spans, start = [], cores[0]
    for prev, cur in zip(cores, cores[1:] + [None]):
        if cur != prev + 1:
            spans.append(f"{start}-{prev}" if prev != start else str(start))
            start = cur
    tags = {CPUS: ",".join(spans), THREADS: str(torch.get_num_threads())}
    if device.type == "cuda":
        tags[GPUS] = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
    return tags


def average_over_ranks(accelerator, value: torch.Tensor) -> torch.Tensor:
    """The mean of a device tensor over ranks, on the device (no host read)."""
    if accelerator.num_processes == 1:
        return value
    t = value.clone()
    torch.distributed.all_reduce(t)
    return t / accelerator.num_processes


def sum_over_ranks(accelerator, values: list[float]) -> list[float]:
    if accelerator.num_processes == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def max_over_ranks(accelerator, value: float) -> float:
    """The largest of a host value over ranks (a collective: every rank calls it at the same point)."""
    if accelerator.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.item()


def stop_code(accelerator, code: int) -> int:
    """The largest stop code over ranks: every rank stops at the same step, for the same reason."""
    if accelerator.num_processes == 1:
        return code
    t = torch.tensor([code], device=accelerator.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def keep_until_exit(trial) -> None:
    """Keep a trial of several processes (its DDP model, its gloo process group) until the process ends
    by ``os._exit``. Freeing the model joins gloo's worker thread from the main thread, which holds the
    GIL, while that thread waits for the GIL to finish work a peer rank left (that rank has exited): both
    wait for good. A 2-process trial pruned at its first evaluation hung so: rank 1 never exited, nor its
    launcher, nor the study waiting on it."""
    _NEVER_FREED.append(trial)
