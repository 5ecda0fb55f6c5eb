"""The Accelerator a trial runs with, in the distributed mode its launch asked for.

``accelerate launch`` tells the ranks what the config file says through the environment
(``ACCELERATE_USE_FSDP``, ``FSDP_*``, ``ACCELERATE_USE_DEEPSPEED``, ``ACCELERATE_DYNAMO_*``).
Accelerate (1.15) selects FSDP and DeepSpeed only on an accelerator: on CPU it runs the same ranks as
plain DDP (``MULTI_CPU``) without a word. lbsearch never lets that pass silently:

- FSDP version 2 on CPU runs as FSDP: torch's ``fully_shard`` works over gloo, so the Accelerator is
  switched to Accelerate's own FSDP2 path (the state Accelerate would have set on a GPU);
- FSDP version 1 on CPU: Accelerate refuses it while building its plugin ("There are currently no
  available devices found, ..."); the trial fails saying so and what to change;
- DeepSpeed on CPU: the trial fails saying that it needs a GPU.

A config file that sets ``dynamo_config`` is honoured: ``launcher.compile`` then adds nothing.
"""


from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["keep_until_exit", "make_accelerator"]

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
    if _flag("ACCELERATE_USE_DEEPSPEED") and cpu:
        raise RuntimeError("DeepSpeed needs a GPU: on CPU Accelerate would run the ranks as plain DDP; use an FSDP "
                           "(`fsdp_version: 2`) or DDP accelerate config")
    # cpu=True also selects Accelerate's multi-CPU (gloo) mode when torchrun started several ranks
    acc = Accelerator(mixed_precision=precision, cpu=cpu, dynamo_plugin=dynamo)
    if fsdp and acc.distributed_type != DistributedType.FSDP:
        _fsdp2_on_cpu(acc)
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


def placement(device: torch.device) -> dict[str, str]:
    """Where rank 0 runs, as MLflow tags: its CPU cores (its affinity, e.g. ``0-3``) and torch's threads, and the
    GPUs it may use (``CUDA_VISIBLE_DEVICES``). ``reproduce`` runs with the same thread count (CPU sums depend on it)."""
    cores = sorted(os.sched_getaffinity(0))
    spans, start = [], cores[0]
    for prev, cur in zip(cores, cores[1:] + [None]):
        if cur != prev + 1:
            spans.append(f"{start}-{prev}" if prev != start else str(start))
            start = cur
    tags = {"lbsearch.cpus": ",".join(spans), "lbsearch.threads": str(torch.get_num_threads())}
    if device.type == "cuda":
        tags["lbsearch.gpus"] = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
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
