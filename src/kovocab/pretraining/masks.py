"""Row masks on gradients: train only the new rows of the input embeddings and the LM head.

EEVE (arXiv:2402.14714) first trains the embeddings of the added pieces while the base
rows stay fixed. The rows are frozen by zeroing their gradient, not by copying values
back: with Adam and no weight decay a row whose gradient is always 0 never moves. A tied
model's one matrix is reached through both modules; both are masked, so both paths of its
gradient leave the old rows at 0.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F


class _RowGradMask(torch.autograd.Function):
    """Identity forward; backward zeroes the gradient of rows [0, first_trainable)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, first_trainable: int) -> torch.Tensor:
        ctx.first_trainable = first_trainable
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone()
        grad[: ctx.first_trainable] = 0
        return grad, None


def _masked_embedding_forward(self: torch.nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    # Under ZeRO-3 self.weight is the whole matrix here: DeepSpeed gathers it in a
    # pre-forward hook, so the mask sees every row and the partitioned grad inherits it.
    weight = _RowGradMask.apply(self.weight, self._kovocab_first_trainable)
    return F.embedding(ids, weight, self.padding_idx, self.max_norm, self.norm_type,
                       self.scale_grad_by_freq, self.sparse)


def _masked_linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = _RowGradMask.apply(self.weight, self._kovocab_first_trainable)
    return F.linear(x, weight, self.bias)


def mask_old_rows(model: Any, first_trainable: int) -> None:
    """Make backward leave rows below `first_trainable` of embeddings and LM head at grad 0."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    for module, forward in ((emb, _masked_embedding_forward), (head, _masked_linear_forward)):
        module._kovocab_first_trainable = first_trainable
        module.forward = types.MethodType(forward, module)


def unmask_rows(model: Any) -> None:
    """Undo `mask_old_rows` (the class forward applies again)."""
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if "forward" in vars(module):
            del module.forward

