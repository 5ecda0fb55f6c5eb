"""An Accelerate config file as lbsearch reads it: what it sets, and where a trial's machines come from. Torch-free, but for Accelerate's check of a config file.

The file is the user's: ``accelerate launch`` gets a flag only for what the file leaves unset
(``lbsearch.orchestrator.launch``), because Accelerate takes a flag over the file, and a mode flag such as
``--multi_gpu`` over the file's ``distributed_type`` (an FSDP file would silently run as DDP).

Each machine setting of a trial comes from, first to last:

1. the config file (``num_machines``, ``machine_rank``, ``main_process_ip``, ``main_process_port``);
2. the spec (``launcher.num_machines`` ...);
3. the scheduler's environment: SLURM (``SLURM_NNODES``, ``SLURM_NODEID``), then torchrun's names
   (``NNODES``, ``NODE_RANK``); ``MASTER_ADDR`` and ``MASTER_PORT`` for the address and port;
4. the default: 1 machine, rank 0, 127.0.0.1, a free port for each trial.

A DeepSpeed file leaves to lbsearch what a trial decides (``_deepspeed_conflict``): the micro-batch, the
accumulation, the clipping, the optimizer and its schedule; ZeRO stages 0 to 2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["MACHINE_KEYS", "read_config", "file_conflict", "machines"]

MACHINE_ENV: dict[str, tuple[str, ...]] = {
    "num_machines": ("SLURM_NNODES", "NNODES"),
    "machine_rank": ("SLURM_NODEID", "NODE_RANK"),
    "main_process_ip": ("MASTER_ADDR",),
    "main_process_port": ("MASTER_PORT",),
}
MACHINE_KEYS = tuple(MACHINE_ENV)


def read_config(path: str | Path) -> dict[str, Any]:
    """The keys the file sets (JSON for ``.json``, else YAML), once Accelerate's own loader accepts the file; else ValueError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read the accelerate config: {err.strerror}: {path}") from None
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - json's and yaml's parse errors
        raise ValueError(f"not a valid accelerate config: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"an accelerate config must be a mapping, got {type(raw).__name__}")
    from accelerate.commands.config.config_args import load_config_from_file

    try:  # Accelerate's own checks (unknown keys, values): the errors `accelerate launch` would give, before any trial
        load_config_from_file(str(path))
    except Exception as err:  # noqa: BLE001 - whatever Accelerate raises is the file's error
        raise ValueError(f"not a valid accelerate config: {str(err).splitlines()[0]}") from None
    return raw


def file_conflict(launcher: Mapping[str, Any], file: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(field, message)`` where the spec and the file disagree on what a trial is, else None."""
    procs = int(launcher["processes"])  # a whole launcher section (model_dump)
    if "num_processes" in file and int(file["num_processes"]) != procs:
        return "processes", (f"`launcher.processes` must equal the accelerate config's `num_processes` (all machines), "
                             f"got {procs} and {file['num_processes']}")
    precision = launcher["precision"]
    mp = file.get("mixed_precision")
    if mp is not None and precision != "auto" and str(mp) != precision:
        return "precision", f"`launcher.precision` must equal the accelerate config's `mixed_precision`, got {precision!r} and {mp!r}"
    for key in MACHINE_KEYS:
        if launcher.get(key) is not None and key in file and str(file[key]) != str(launcher[key]):
            return key, f"`launcher.{key}` is set by the accelerate config too, differently: got {launcher[key]!r} and {file[key]!r}"
    if str(file.get("distributed_type", "")).upper() == "NO" and procs > 1:
        return "processes", f"the accelerate config's `distributed_type: NO` runs one process, got `launcher.processes: {procs}`"
    if str(file.get("distributed_type", "")).upper() == "DEEPSPEED":
        return _deepspeed_conflict(precision, file.get("deepspeed_config") or {})
    return None


def _deepspeed_conflict(precision: str, section: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(field, message)`` where a DeepSpeed config (the accelerate config's ``deepspeed_config``, and the DeepSpeed
    JSON its ``deepspeed_config_file`` names) sets what lbsearch decides per trial, else None. lbsearch writes each
    trial's micro-batch, accumulation and clipping into DeepSpeed's config (``lbsearch.trial.distributed.prepare``)
    and builds the optimizer and its schedule itself; ZeRO stage 3 is refused (the kept model is the unwrapped module)."""
    field = "accelerate_config"
    if section.get("gradient_accumulation_steps", 1) not in (1, "auto"):
        return field, ("`deepspeed_config.gradient_accumulation_steps` must be 1 or `auto`: lbsearch derives each trial's from "
                       f"`train.batch_size` and `launcher.max_micro_batch`, got {section['gradient_accumulation_steps']!r}")
    if "gradient_clipping" in section:
        return field, f"`deepspeed_config.gradient_clipping` must be left out: each trial's comes from `train.clip_norm`, got {section['gradient_clipping']!r}"
    stage, where, json_file = section.get("zero_stage"), "`deepspeed_config.zero_stage`", section.get("deepspeed_config_file")
    if json_file:
        try:
            ds = json.loads(Path(json_file).read_text())
        except (OSError, ValueError) as err:
            return field, f"cannot read the DeepSpeed config `deepspeed_config_file` {json_file}: {str(err).splitlines()[0]}"
        for key in ("optimizer", "scheduler"):
            if key in ds:
                return field, (f"the DeepSpeed config {json_file} must have no `{key}` section: lbsearch hands DeepSpeed its own optimizer "
                               "(`optimizer.*`) and steps its own schedule (`schedule.*`)")
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            if ds.get(key, "auto") != "auto":
                return field, f"`{key}` in the DeepSpeed config {json_file} must be `auto` or left out: lbsearch sets it per trial, got {ds[key]!r}"
        for dtype in ("fp16", "bf16"):
            enabled = str((ds.get(dtype) or {}).get("enabled", False)).lower() == "true"
            if enabled and precision not in ("auto", dtype):
                return "precision", f"`launcher.precision` must match `{dtype}.enabled: true` in the DeepSpeed config {json_file}, got {precision!r}"
        stage, where = (ds.get("zero_optimization") or {}).get("stage"), f"`zero_optimization.stage` in {json_file}"
    if stage is not None and int(stage) > 2:
        return field, f"{where} must be 0, 1 or 2: under ZeRO stage 3 lbsearch cannot keep the trial's model (FSDP shards parameters), got {stage}"
    return None


def machines(launcher: Mapping[str, Any], file: Mapping[str, Any], env: Mapping[str, str] | None = None,
             free_port: Callable[[], int] | None = None) -> dict[str, Any]:
    """The four machine settings of a trial, by the precedence in this module's docstring."""
    env = os.environ if env is None else env
    defaults: dict[str, Any] = {"num_machines": 1, "machine_rank": 0, "main_process_ip": "127.0.0.1", "main_process_port": None}
    out: dict[str, Any] = {}
    for key, names in MACHINE_ENV.items():
        if key in file:
            value = file[key]
        elif launcher.get(key) is not None:
            value = launcher[key]
        elif key == "machine_rank" and out["num_machines"] == 1:
            value = 0  # one machine: a node rank in the environment belongs to something else (a worker per node)
        else:
            value = next((env[n] for n in names if env.get(n)), defaults[key])
        if value is None and key == "main_process_port":
            value = free_port() if free_port else None
        out[key] = value if key == "main_process_ip" or value is None else int(value)
    return out

