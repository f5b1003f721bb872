"""HCIC's content-preserve block: the heat map of the content a good crop keeps (graph reasoning or
convolutions over the reduced features) and each crop's content feature on it, computed from the
crop mask's row and column factors without drawing any mask.

Built on torch and ``untils.boxes`` only; ``cropping_model.HumanCentricCroppingModel`` uses it.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from untils.boxes import HEAT_MAP_SIZE

# Crops whose content features are computed together: bounds the memory of the per-crop maps (FCDB
# and FLMS score 1,745 anchors per image).
CROP_CHUNK = 512
# On the CPU, crops whose first-layer maps (60x60x64 floats each, ~0.9 MB) are built and pooled
# together: a sub-chunk stays in the cache between the two passes over it.
CPU_FIRST_LAYER_CHUNK = 8


class GraphReasoningModule(nn.Module):
    """Graph reasoning over feature-map positions: cosine-similarity softmax, then a projection."""

    def __init__(self, in_dim: int, inter_dim: int, out_dim: int) -> None:
        super().__init__()
        self.phi = nn.Linear(in_dim, inter_dim, bias=False)
        self.theta = nn.Linear(in_dim, inter_dim, bias=False)
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, feat_map: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = feat_map.shape
        nodes = feat_map.flatten(2).transpose(1, 2)  # (B, HW, C)
        phi, theta = self.phi(nodes), self.theta(nodes)
        product = phi @ theta.transpose(1, 2)
        norms = phi.norm(dim=-1, keepdim=True) @ theta.norm(dim=-1, keepdim=True).transpose(1, 2)
        similarity = torch.softmax(product / norms.clamp_min(1e-12), dim=-1)
        out = (similarity @ nodes) @ self.weight  # (B, HW, out_dim)
        return F.relu(out.transpose(1, 2).reshape(batch, -1, height, width))


class ContentPreserveModule(nn.Module):
    """Predicts a heat map of content a good crop keeps, and a feature of each crop's mask on it."""

    def __init__(self, in_dim: int, inter_dim: int, out_dim: int, mode: str = "gcn") -> None:
        super().__init__()
        self.relation_encoder: nn.Module
        if mode == "conv":
            self.relation_encoder = nn.Sequential(
                nn.Conv2d(in_dim, in_dim, kernel_size=3, padding=1),
                nn.ReLU(True),
                nn.Conv2d(in_dim, inter_dim, kernel_size=1),
            )
        elif mode == "gcn":
            self.relation_encoder = GraphReasoningModule(in_dim, in_dim, inter_dim)
        else:
            raise ValueError(f"content_preserve_type={mode!r}; expected 'gcn' or 'conv'")
        self.preserve_predict = nn.Sequential(
            nn.Upsample(size=(HEAT_MAP_SIZE, HEAT_MAP_SIZE), mode="bilinear", align_corners=True),
            nn.Conv2d(inter_dim, inter_dim, kernel_size=3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(inter_dim, 1, kernel_size=1),
            nn.Sigmoid(),
        )
        # No non-linearity between these layers, as in the release (parameter indices match it).
        self.content_feat_layer = nn.Sequential(
            nn.Conv2d(2, 64, kernel_size=5),
            nn.MaxPool2d(kernel_size=2),
            nn.Conv2d(64, 32, kernel_size=5),
            nn.MaxPool2d(kernel_size=2),
            nn.Flatten(1),
            nn.Linear(32 * 13 * 13, out_dim),
        )

    def predict_heat_map(self, feat_map: torch.Tensor) -> torch.Tensor:
        return self.preserve_predict(self.relation_encoder(feat_map))

    def crop_features_reference(
        self, heat_map: torch.Tensor, masks: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        """The plain formulation (the release's): ``content_feat_layer`` on [its image's heat map, its
        crop mask] for each crop; ``masks`` (K, 64, 64), ``image_index`` (K,). :meth:`crop_features`
        computes the same for box masks, faster."""
        inputs = torch.cat([heat_map.index_select(0, image_index), masks.unsqueeze(1).to(heat_map.dtype)], dim=1)
        return self.content_feat_layer(inputs)

    def crop_features(
        self, heat_map: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        """Content feature (K, out_dim) of crops whose masks are ``outer(rows[k], columns[k])``.

        Equal to :meth:`crop_features_reference`. The first convolution is linear, so it splits into a
        heat-map half (with the bias), run once per image, and a mask half which, for a box mask, is
        ``sum_j columns[x+j] * (sum_i rows[y+i] W[o,i,j])``: separable, no per-crop convolution. Only
        the pooling, the second convolution and the linear layer see each crop. First-layer maps are
        kept channels-last (the CPU's max pooling is several times faster so); crops go ``CROP_CHUNK``
        at a time, and on the CPU ``CPU_FIRST_LAYER_CHUNK`` at a time through the cache.
        """
        first, pool = cast(nn.Conv2d, self.content_feat_layer[0]), self.content_feat_layer[1]
        heat_term = F.conv2d(heat_map, first.weight[:, :1], first.bias).permute(0, 2, 3, 1).contiguous()
        count = image_index.shape[0]
        if count == 0:
            return heat_term.new_zeros(0, cast(nn.Linear, self.content_feat_layer[-1]).out_features)
        kernel = first.weight[:, 1].to(heat_term.dtype)  # (C, s, s)
        size, height, width = kernel.shape[-1], heat_term.shape[1], heat_term.shape[2]
        step = CPU_FIRST_LAYER_CHUNK if heat_map.device.type == "cpu" else CROP_CHUNK
        features = []
        for start in range(0, count, CROP_CHUNK):
            stop = min(start + CROP_CHUNK, count)
            row_windows = rows[start:stop].to(kernel.dtype).unfold(1, size, 1)  # (k, h, s): rows[y + i]
            column_windows = columns[start:stop].to(kernel.dtype).unfold(1, size, 1)  # (k, w, s): columns[x + j]
            crops = stop - start
            row_sums = torch.einsum("kyi,oij->kyjo", row_windows, kernel).reshape(crops * height, size, -1)
            columns_per_row = column_windows.unsqueeze(1).expand(crops, height, width, size).reshape(-1, width, size)
            pooled = []
            for begin in range(0, crops, step):
                end = min(begin + step, crops)
                maps = heat_term.index_select(0, image_index[start + begin : start + end])  # (k, h, w, C), fresh
                rows_of_crops = slice(begin * height, end * height)
                maps.view(-1, width, maps.shape[-1]).baddbmm_(columns_per_row[rows_of_crops], row_sums[rows_of_crops])
                pooled.append(pool(maps.permute(0, 3, 1, 2)))
            features.append(self.content_feat_layer[2:](torch.cat(pooled)))
        return torch.cat(features)
