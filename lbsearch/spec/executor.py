"""Where a study's trials run: ``executor: {kind: local}`` (this host) or ``{kind: ray, address: ...}``
(each trial placed on a Ray cluster by the resources it asks for, ``lbsearch.orchestrator.ray_executor``), and
what a trial asks Ray for: one bundle of GPUs and CPUs per machine it spans."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ExecutorConfig", "WithExecutor", "bundles"]


class ExecutorConfig(BaseModel):
    """The study field ``executor``; ``lbsearch run --ray ADDRESS`` sets ``{kind: ray, address: ADDRESS}``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    """``ray``: the cluster's address as ``ray.init`` takes it (``auto``, ``HOST:6379``, ``ray://HOST:10001``); default ``auto``."""
    cpus_per_process: float = Field(1, gt=0)
    """``ray``: the CPUs each of a trial's processes asks for (its threads on a CPU)."""
    gpus_per_process: float | None = Field(None, ge=0)
    """``ray``: the GPUs each process asks for; default 1, or 0 with ``launcher.cpu``."""

    @model_validator(mode="after")
    def _ray_only(self) -> "ExecutorConfig":
        if self.kind == "local" and self.address is not None:
            raise ValueError(f"`address` is for `kind: ray`, got kind {self.kind!r} with address {self.address!r}")
        return self


class WithExecutor(BaseModel):
    """The study's field ``executor`` (``StudyConfig`` takes it from here)."""

    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    """Where trials run: this host (``kind: local``) or a Ray cluster (``kind: ray``; docs/scale_out.md)."""


def bundles(launcher: dict[str, Any], executor: ExecutorConfig) -> list[dict[str, float]]:
    """The Ray resource bundles of a trial: one per machine (``launcher.num_machines``, default 1), each with that
    machine's share of ``launcher.processes`` x the GPUs and CPUs per process. ValueError where the processes do
    not divide among the machines."""
    machines, procs = int(launcher.get("num_machines") or 1), int(launcher["processes"])
    if procs % machines:
        raise ValueError(f"`launcher.processes` ({procs}, on all machines) must be divisible by `launcher.num_machines` ({machines})")
    per = procs // machines
    gpus = executor.gpus_per_process if executor.gpus_per_process is not None else (0.0 if launcher.get("cpu") else 1.0)
    bundle = {"CPU": per * executor.cpus_per_process} | ({"GPU": per * gpus} if gpus else {})
    return [dict(bundle) for _ in range(machines)]
