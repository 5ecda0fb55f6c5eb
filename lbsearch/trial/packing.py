"""Packing: a micro-batch's sequences laid end to end in rows, so that little compute goes to padding.

A padded micro-batch is as wide as its longest sequence; with reviews of 5 to 64 tokens (27 on
average), a third of a micro-batch of 16 is padding. Packed, the same sequences fill rows of at
most ``data.max_length`` tokens (first-fit decreasing), each attending only to itself:

- a block-diagonal attention mask built by transformers' own mask builder
  (``masking_utils.create_bidirectional_mask`` with an and-mask over segment ids), so it takes the
  form the model's attention implementation expects (a boolean mask for SDPA, an additive one for
  eager attention);
- positions restarting at each sequence (offset by the embeddings' ``padding_idx`` + 1 where the
  family counts positions from there, as RoBERTa does);
- the pooled head reading each sequence's tokens back by its segment id.

The model is the same function of the same samples: only the layout changes. Rows are still padded
to the fullest row, and attention still computes (and masks) the scores between a row's segments,
so some compute remains that is not the model's. A trial checks the equivalence once (``check``:
packed and padded logits of a few samples in fp32, eval mode); a model whose attention ignores the
4D mask, or whose embeddings ignore ``position_ids``, fails it and trains padded, with the reason
in the log and the run's tags. Decoders (causal masks), sliding-window layers narrower than a row,
and attention kernels that take no mask (flash attention) are left padded without running it
(``unsupported``).
"""

from __future__ import annotations

import numpy as np
import torch

from lbsearch.spec import PACKING
from lbsearch.trial.batching import to_device
from lbsearch.trial.distributed import sum_over_ranks

__all__ = ["pack", "segment_mask", "pool_segments", "position_offset", "unsupported", "check", "packing_offset"]

PACKED_LOGITS_TOLERANCE = 1e-4
"""Largest difference of fp32 logits, relative to their scale, between packed and padded layouts."""


def _rows(lengths: list[int], width: int) -> list[list[int]]:
    """First-fit decreasing: the sequences' indices, longest first, each in the first row it fits."""
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, used in enumerate(fill) if used + lengths[i] <= width), len(rows))
        if r == len(rows):
            rows.append([])
            fill.append(0)
        rows[r].append(i)
        fill[r] += lengths[i]
    return rows


def pack(seqs: list[np.ndarray], width: int, pad_id: int, device, types: list[np.ndarray] | None = None,
         first_position: int = 0, multiple: int = 1) -> dict[str, torch.Tensor]:
    """The model inputs of ``seqs`` packed into rows of at most ``width`` tokens (a longer sequence gets
    a row of its own), as wide as the fullest row rounded up to ``multiple``. ``segment_ids[r, t]`` is
    the index in ``seqs`` of the sequence that token t of row r belongs to, -1 for the padding at a
    row's end: the head's outputs come back in ``seqs``' order."""
    lengths = [len(s) for s in seqs]
    rows = _rows(lengths, width)
    cols = -(-max(sum(lengths[i] for i in row) for row in rows) // multiple) * multiple
    ids = np.full((len(rows), cols), pad_id, dtype=np.int64)
    pos = np.zeros((len(rows), cols), dtype=np.int64)
    seg = np.full((len(rows), cols), -1, dtype=np.int64)
    typ = np.zeros((len(rows), cols), dtype=np.int64) if types is not None else None
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = lengths[i]
            ids[r, at : at + n], seg[r, at : at + n] = seqs[i], i
            pos[r, at : at + n] = np.arange(first_position, first_position + n)
            if typ is not None:
                typ[r, at : at + n] = types[i]
            at += n
    batch = {"input_ids": ids, "position_ids": pos, "segment_ids": seg, "segment_lengths": np.asarray(lengths, dtype=np.int64)}
    batch |= {"token_type_ids": typ} if typ is not None else {}
    return {k: to_device(v, device) for k, v in batch.items()}


def segment_mask(config, segment_ids: torch.Tensor, dtype: torch.dtype):
    """The 4D mask in which a token attends to the tokens of its own segment only (a row's padding,
    segment -1, to the padding), in the form ``config``'s attention implementation takes."""
    from transformers.masking_utils import create_bidirectional_mask

    def same_segment(batch_idx, head_idx, q_idx, kv_idx):
        return segment_ids[batch_idx, q_idx] == segment_ids[batch_idx, kv_idx]

    shape = torch.empty((*segment_ids.shape, 1), dtype=dtype, device=segment_ids.device)  # read for its shape, dtype, device
    return create_bidirectional_mask(config=config, inputs_embeds=shape, attention_mask=None, and_mask_function=same_segment)


def pool_segments(hidden: torch.Tensor, segment_ids: torch.Tensor, pooling: str, lengths: torch.Tensor) -> torch.Tensor:
    """One vector per segment, in segment order: the mean of its tokens (summed in fp32, as a padded
    mean's reduction is), or its last token. ``lengths``: each segment's tokens; its size, known on the
    host, is the number of segments (no host read: a row's padding goes to one more bucket, dropped)."""
    k, flat = len(lengths), segment_ids.reshape(-1)
    seg, vectors = torch.where(flat >= 0, flat, k), hidden.reshape(-1, hidden.shape[-1])
    if pooling == "mean":
        sums = torch.zeros(k + 1, hidden.shape[-1], dtype=torch.float32, device=hidden.device).index_add_(0, seg, vectors.float())
        return (sums[:k] / lengths.unsqueeze(-1)).to(hidden.dtype)
    where = torch.arange(len(flat), device=hidden.device)
    last = torch.zeros(k + 1, dtype=torch.long, device=hidden.device).scatter_reduce_(0, seg, where, "amax")
    return vectors[last[:k]]


def position_offset(model: torch.nn.Module) -> int:
    """Where positions start: ``padding_idx + 1`` for families whose position embeddings count from
    there (RoBERTa, XLM-R, CamemBERT), else 0."""
    for module in model.modules():
        padding_idx = getattr(module, "padding_idx", None)
        if isinstance(padding_idx, int) and isinstance(getattr(module, "position_embeddings", None), torch.nn.Embedding):
            return padding_idx + 1
    return 0


def unsupported(config, width: int) -> str | None:
    """Why a model of ``config`` cannot be packed in rows of ``width`` tokens, known without running it;
    None where only ``check`` can tell."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager", "flex_attention"):
        return f"attention implementation {impl}: it takes no block mask"
    model_type = getattr(config, "model_type", "")
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return f"{model_type} is a decoder: its causal mask is not the block mask"
    window = getattr(config, "sliding_window", None)
    if set(getattr(config, "layer_types", None) or []) - {"full_attention"} and not (isinstance(window, int) and window >= width):
        return f"sliding-window layers (window {window}) narrower than a row of {width} tokens: the block mask would widen them"
    return None


@torch.no_grad()
def check(model: torch.nn.Module, seqs: list[np.ndarray], width: int, pad_id: int, types: list[np.ndarray] | None = None) -> str | None:
    """None where ``model`` gives packed ``seqs`` the logits it gives them padded (fp32, eval mode);
    else why not, in a few words. Each sequence is cut to a quarter of ``width`` first, so that rows
    hold several and the mask and the positions are put to the test. The model's mode is restored; no
    random number is drawn."""
    from lbsearch.trial.batching import pad

    if len(seqs) < 2:
        return "fewer than 2 training samples to check it on"
    cut = max(1, width // 4)
    seqs, types = [s[:cut] for s in seqs], [t[:cut] for t in types] if types is not None else None
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    try:
        padded = model(**pad(seqs, pad_id, device, types)).logits.float()
        packed = model(**pack(seqs, width, pad_id, device, types, position_offset(model))).logits.float()
    except Exception as err:  # noqa: BLE001 - any failure means: train padded, and say why
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    finally:
        model.train(was_training)
    diff = (packed - padded).abs().max().item() / max(padded.abs().max().item(), 1.0)
    return None if diff <= PACKED_LOGITS_TOLERANCE else f"packed logits differ from padded ones by {diff:.1e} (relative)"


def packing_offset(trial, model: torch.nn.Module, pooled: bool) -> int | None:
    """Where packed positions start if ``trial``'s micro-batches are packed (``launcher.pack``, a classifier with
    the pooled head (``pooled``), nothing in ``unsupported``, and ``check`` passed on short training samples on
    every rank), else None. Tagged ``lbsearch.packing``: ``on`` or ``off: why``."""
    if trial.lm:
        return None
    if not trial.exp.launcher.pack:
        trial.rep.tags({PACKING: "off: launcher.pack is false"})
        return None
    width = trial.exp.data.max_length
    why = "pooling cls: the architecture's own head" if not pooled else unsupported(model.config, width)
    if why is None:
        train = trial.data["train"]
        few = sorted(range(min(len(train.ids), 256)), key=lambda i: len(train.ids[i]))[:8]
        why = check(model, [train.ids[i] for i in few], width, trial.pad_id, [train.types[i] for i in few] if trial.use_types else None)
        if sum_over_ranks(trial.acc, [float(why is not None)])[0] and why is None:  # every rank packs, or none
            why = "the check failed on another process"
        if why:
            trial.say(f"packing: off ({why})")
    trial.rep.tags({PACKING: f"off: {why}" if why else "on"})
    return None if why else position_offset(model)
