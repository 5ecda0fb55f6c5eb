"""The sample stream and each step's micro-batch layout (the batch arithmetic is in ``lbsearch.spec.plan``).

B (``train.batch_size``) is the effective batch: micro-batch x accumulation x processes. The order
in which samples are seen depends only on the seed and B, never on how B is split, so a trial with
2 processes x accumulation 1 sees exactly what 1 process x accumulation 2 sees.
"""


from __future__ import annotations

import numpy as np
import torch

from lbsearch.spec import BatchPlan

__all__ = ["sample_stream", "step_micro_batches"]


def sample_stream(n_train: int, batch_size: int, steps: int, seed: int, start: int = 0, phases=()) -> np.ndarray | list[np.ndarray]:
    """Indices for ``steps`` optimizer steps of ``batch_size``: seeded permutations, back to back.

    Returns an array of shape (steps, batch_size). Each epoch is a fresh permutation; an epoch's
    tail continues into the next batch, so there is no short batch and no dropped sample. The
    sequence of indices depends on the seed only; ``start`` (samples) is where this trial begins
    reading it: a branch reads the reference's stream on from its branch point (``lbsearch.spec.branch``).
    With a batch schedule's ``phases`` ((first step, B, lr, steps) each) the same sequence is cut into
    steps of each phase's B: a list of arrays, one per step.
    """
    sizes = [B for _, B, _, n in phases for _ in range(n)] if phases else None
    need = start + (sum(sizes) if sizes else steps * batch_size)
    rng = np.random.default_rng(seed)
    chunks, have = [], 0
    while have < need:
        chunks.append(rng.permutation(n_train))
        have += n_train
    flat = np.concatenate(chunks)[start:need]
    if sizes is None:
        return flat.reshape(steps, batch_size)
    return np.split(flat, np.cumsum(sizes)[:-1])


def step_micro_batches(step_ids: np.ndarray, lengths: np.ndarray, plan: BatchPlan, rank: int, head: int = 0) -> list[np.ndarray]:
    """This rank's micro-batches for one optimizer step.

    The step's B ids come in random order (``sample_stream``). Rank r takes the r-th contiguous share,
    a random subset. Within the share, the first ``head`` micro-batches' worth of samples (again a
    random subset) and the rest are each sorted by length before being cut: micro-batches of
    similar lengths waste little on padding (~1.4x faster on CPU), while the subsets that the noise
    scale reads (a rank's share, or the head) stay random. The step's gradient is that of the same
    B samples whatever the layout.
    """
    share = len(step_ids) // plan.processes
    mine = step_ids[rank * share : (rank + 1) * share]
    cut = head * plan.micro_batch
    ordered = np.concatenate([p[np.argsort(lengths[p], kind="stable")] for p in (mine[:cut], mine[cut:]) if len(p)])
    return [ordered[i : i + plan.micro_batch] for i in range(0, len(ordered), plan.micro_batch)]


def to_device(array: np.ndarray, device) -> torch.Tensor:
    """A host array on ``device``: on a GPU copied from pinned memory without waiting (the step's kernels
    queue behind the copy, and torch keeps the pinned block until the copy is done); elsewhere as is."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def pad(seqs: list[np.ndarray], pad_id: int, device, types: list[np.ndarray] | None = None, multiple: int = 1) -> dict[str, torch.Tensor]:
    """A right-padded batch, as wide as the longest sequence rounded up to ``multiple``; ``types`` (the
    segment ids of text pairs) become ``token_type_ids``. A batch without padding has no attention mask
    (transformers would read an all-ones one on the host to drop it: a host sync per forward)."""
    width = -(-max(len(s) for s in seqs) // multiple) * multiple
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    batch = {"input_ids": to_device(ids, device)} | ({} if mask.all() else {"attention_mask": to_device(mask, device)})
    if types is not None:
        segments = np.zeros((len(seqs), width), dtype=np.int64)
        for i, t in enumerate(types):
            segments[i, : len(t)] = t
        batch["token_type_ids"] = to_device(segments, device)
    return batch


