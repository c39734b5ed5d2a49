"""The running batch of the local engine: one left-padded KV cache shared by every sequence being decoded.

Sequences join between decode steps (their prompts are prefilled together, then their cache rows are padded on the
left and concatenated to the running cache) and leave the moment they finish (rows are dropped; columns that are
padding in every remaining row are trimmed). Position ids are explicit per row, so padding never shifts a sequence.
This works for decoder models whose cache layers all hold the full history (Llama, Qwen, Mistral without a
sliding window, GPT-2); sliding-window layers are refused when the model loads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RunningBatch:
    def __init__(self):
        self.cache = None  # transformers Cache with B rows
        self.attention_mask: torch.Tensor | None = None  # (B, L) 1 = real token, 0 = left padding
        self.positions: torch.Tensor | None = None  # (B,) position id of each row's next input token
        self.next_tokens: torch.Tensor | None = None  # (B,) token each row feeds at the next step

    @property
    def size(self) -> int:
        return 0 if self.next_tokens is None else int(self.next_tokens.shape[0])

    def add(self, cache, attention_mask: torch.Tensor, positions: torch.Tensor, next_tokens: torch.Tensor) -> None:
        """Append rows from a prefill, padding whichever side has the shorter history on the left."""
        if self.size == 0:
            self.cache, self.attention_mask, self.positions, self.next_tokens = (
                cache, attention_mask, positions, next_tokens)
            return
        length = max(self.attention_mask.shape[1], attention_mask.shape[1])
        for running_layer, new_layer in zip(self.cache.layers, cache.layers, strict=True):
            running_layer.keys = torch.cat([_left_pad(running_layer.keys, length),
                                            _left_pad(new_layer.keys, length)], dim=0)
            running_layer.values = torch.cat([_left_pad(running_layer.values, length),
                                              _left_pad(new_layer.values, length)], dim=0)
        self.attention_mask = torch.cat([_left_pad_mask(self.attention_mask, length),
                                         _left_pad_mask(attention_mask, length)], dim=0)
        self.positions = torch.cat([self.positions, positions])
        self.next_tokens = torch.cat([self.next_tokens, next_tokens])

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order), then trim columns that are padding everywhere."""
        if not rows:
            self.__init__()
            return
        if len(rows) != self.size:
            index = torch.tensor(rows, device=self.next_tokens.device)
            for layer in self.cache.layers:
                layer.keys = layer.keys.index_select(0, index)
                layer.values = layer.values.index_select(0, index)
            self.attention_mask = self.attention_mask.index_select(0, index)
            self.positions = self.positions.index_select(0, index)
            self.next_tokens = self.next_tokens.index_select(0, index)
        used_columns = self.attention_mask.any(dim=0).nonzero()
        first = int(used_columns[0]) if len(used_columns) else 0
        if first > 0:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, first:, :]
                layer.values = layer.values[:, :, first:, :]
            self.attention_mask = self.attention_mask[:, first:]

    def step_inputs(self) -> dict:
        """Model inputs of one decode step: each row's pending token at its own position."""
        ones = torch.ones_like(self.attention_mask[:, :1])
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)  # (B, L+1)
        return {
            "input_ids": self.next_tokens[:, None],  # (B, 1)
            "attention_mask": self.attention_mask,
            "position_ids": self.positions[:, None],  # (B, 1)
            "past_key_values": self.cache,
            "use_cache": True,
        }


def _left_pad(states: torch.Tensor, length: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, length, D) with zeros on the left."""
    return F.pad(states, (0, 0, length - states.shape[2], 0))


def _left_pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(mask, (length - mask.shape[1], 0))
