"""Per-sequence summed log-probs of completion tokens, without full [batch, length, vocab] float32 logits.

The decoder runs once; only the hidden states at positions that predict a completion token go through
the LM head, in chunks of `chunk_tokens`, each chunk under activation checkpointing when gradients are
needed, so peak extra memory is one [chunk_tokens, vocab] block instead of [batch, length, vocab].
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from kto_bench.data.tokenize import Seq


def collate(seqs: list[Seq], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and a mask of the positions that predict completion tokens."""
    length = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), length), dtype=torch.long)
    predicts = torch.zeros((len(seqs), length), dtype=torch.bool)  # position t predicts token t+1
    for i, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        attn[i, :n] = 1
        predicts[i, max(len(p) - 1, 0) : n - 1] = True
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device), "predicts": predicts.to(device)}


def _head_logps(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    logits = head(hidden).float()  # [chunk, vocab]
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.gather(logits.log_softmax(-1), 1, targets[:, None]).squeeze(1)


def sequence_logps(
    model, batch: dict[str, torch.Tensor], chunk_tokens: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs [B], completion token counts [B]) for a collated batch."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    predicts = batch["predicts"]
    rows, cols = predicts.nonzero(as_tuple=True)  # [N] positions that predict a completion token
    targets = batch["input_ids"][rows, cols + 1]
    selected = hidden[rows, cols]  # [N, H]
    softcap = getattr(model.config, "final_logit_softcapping", None)
    parts = []
    for start in range(0, selected.shape[0], chunk_tokens):
        h, t = selected[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(_head_logps, head, h, t, softcap, use_reentrant=False))
        else:
            parts.append(_head_logps(head, h, t, softcap))
    token_logps = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(predicts.shape[0], dtype=torch.float32, device=hidden.device).index_add(
        0, rows, token_logps
    )
    return sums, predicts.sum(1)


def naive_sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The plain path (full logits), kept to check the chunked path against."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logps = logits[:, :-1].log_softmax(-1).gather(2, batch["input_ids"][:, 1:, None]).squeeze(2)
    return (logps * batch["predicts"][:, :-1]).sum(1)


class LogProbs(torch.nn.Module):
    """`sequence_logps` as a module: the training loop prepares (DDP/FSDP-wraps) this, not the causal LM,
    so the wrapper sees the forward and its gradient sync and parameter all-gathers run. `.model` is
    the causal LM (its state-dict keys gain a `model.` prefix here)."""

    def __init__(self, model: torch.nn.Module, chunk_tokens: int = 4096) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, predicts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "predicts": predicts}
        return sequence_logps(self.model, batch, self.chunk_tokens)
