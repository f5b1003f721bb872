"""DANet's dual attention as PIC's release calls it: ``DAModule(d_model, kernel_size, H, W)`` of
External-Attention-pytorch (github xmu-xiaoma666, ``model/attention/DANet.py``), which the release
names but does not ship. Parameter names are that module's, so the release's attention checkpoints
load with ``strict=True``; the maths is its (no residual, no learned gate), written here from its
definition.

External-Attention-pytorch's ``DAModule`` builds its two branches for 512 channels and a 7x7 map
whatever it is given; the release's call (448 or 812 channels, 16x16) can only have run with the
arguments passed on, which is what :class:`DualAttention` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

ATTENTION_DROPOUT = 0.1  # on the attention weights, in training mode only (the module's default)


def _attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, dropout: nn.Dropout) -> torch.Tensor:
    """One head of scaled dot-product attention over rows: (B, n, d) -> (B, n, d_v)."""
    weights = torch.softmax(queries @ keys.transpose(1, 2) / math.sqrt(queries.shape[-1]), dim=-1)
    return dropout(weights) @ values


class ProjectedSelfAttention(nn.Module):
    """Single-head self-attention with query, key, value and output projections (``fc_q``, ``fc_k``,
    ``fc_v``, ``fc_o``, each ``dim`` -> ``dim``): the position branch's ``pa``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc_q, self.fc_k, self.fc_v, self.fc_o = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = nn.Dropout(ATTENTION_DROPOUT)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.fc_o(_attend(self.fc_q(rows), self.fc_k(rows), self.fc_v(rows), self.dropout))


class PlainSelfAttention(nn.Module):
    """Single-head self-attention of the rows themselves (no input projections), then ``fc_o``
    (``dim`` -> ``dim``): the channel branch's ``pa``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc_o = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(ATTENTION_DROPOUT)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.fc_o(_attend(rows, rows, rows, self.dropout))


class PositionAttention(nn.Module):
    """A conv (``cnn``, same size), then attention among the H*W positions (C features each)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.cnn = nn.Conv2d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
        self.pa = ProjectedSelfAttention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        out = self.pa(self.cnn(x).flatten(2).transpose(1, 2))  # (B, HW, C)
        return out.transpose(1, 2).reshape(batch, channels, height, width)


class ChannelAttention(nn.Module):
    """A conv (``cnn``, same size), then attention among the C channels (H*W features each): the
    map must be ``height`` x ``width``, the size of ``pa.fc_o``."""

    def __init__(self, channels: int, kernel_size: int, height: int, width: int) -> None:
        super().__init__()
        self.cnn = nn.Conv2d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
        self.pa = PlainSelfAttention(height * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] != self.pa.fc_o.in_features:
            raise ValueError(
                f"channel attention over a {x.shape[-2]}x{x.shape[-1]} map: it was built for "
                f"{self.pa.fc_o.in_features} positions (the release: 16x16, a 256x256 photo)"
            )
        return self.pa(self.cnn(x).flatten(2)).view_as(x)


class DualAttention(nn.Module):
    """``DAModule``: the position and the channel branch side by side, their outputs summed (the
    sum replaces the features: there is no residual)."""

    def __init__(self, channels: int, kernel_size: int = 3, height: int = 16, width: int = 16) -> None:
        super().__init__()
        self.position_attention_module = PositionAttention(channels, kernel_size)
        self.channel_attention_module = ChannelAttention(channels, kernel_size, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.position_attention_module(x) + self.channel_attention_module(x)
