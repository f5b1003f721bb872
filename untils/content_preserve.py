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
# On the CPU fewer at a time: a chunk's pooled maps (30x30x64 floats a crop) then stay in the cache
# between the passes over them.
CPU_CROP_CHUNK = 32


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
        """Content feature (K, out_dim) of crops whose masks are ``outer(rows[k], columns[k])``, with
        ``rows`` and ``columns`` 0/1 indicators of one run of cells each (:func:`crop_mask_factors`).

        Equal to :meth:`crop_features_reference`, without a per-crop first layer. That convolution is
        linear: a heat-map half (with the bias) run once per image, plus a mask half that is the
        kernel's sum where its window lies inside the box and 0 where it lies outside. So, away from
        the box's edges, the pooled first layer is the pooled heat-map half plus that sum; along each
        of the four edges a band of a few pooled lines is computed exactly (the mask half there is
        separable: ``sum_j columns[x+j] * (sum_i rows[y+i] W[o,i,j])``) and written over it. Only the
        second convolution and what follows see each crop's whole map.
        """
        first, pool = cast(nn.Conv2d, self.content_feat_layer[0]), self.content_feat_layer[1]
        heat_term = F.conv2d(heat_map, first.weight[:, :1], first.bias).permute(0, 2, 3, 1).contiguous()  # (B,h,w,C)
        count = image_index.shape[0]
        if count == 0:
            return heat_term.new_zeros(0, cast(nn.Linear, self.content_feat_layer[-1]).out_features)
        kernel = first.weight[:, 1].to(heat_term.dtype)  # (C, s, s)
        size = kernel.shape[-1]
        pooled_heat = pool(heat_term.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, h/2, w/2, C)
        inside = kernel.sum((1, 2))  # the mask half where the kernel's window lies inside the box
        # the columns' bands are the rows' bands of the transposed maps
        swapped_term, swapped_kernel = heat_term.transpose(1, 2).contiguous(), kernel.transpose(1, 2)
        chunk = CPU_CROP_CHUNK if heat_map.device.type == "cpu" else CROP_CHUNK
        features = []
        for start in range(0, count, chunk):
            index = image_index[start : start + chunk]
            row_windows = rows[start : start + chunk].to(kernel.dtype).unfold(1, size, 1)  # (k, h, s): rows[y + i]
            column_windows = columns[start : start + chunk].to(kernel.dtype).unfold(1, size, 1)  # (k, w, s)
            whole = _pooled_inside(row_windows).unsqueeze(2) * _pooled_inside(column_windows).unsqueeze(1)
            pooled = pooled_heat.index_select(0, index).addcmul_(whole.unsqueeze(-1), inside)
            picked = torch.arange(len(index), device=pooled.device).unsqueeze(1)  # each crop's own lines
            for edge in _run_edges(rows[start : start + chunk]):
                lines, band = _edge_band(heat_term, index, picked, row_windows, column_windows, kernel, edge, pool)
                pooled[picked, lines] = band
            for edge in _run_edges(columns[start : start + chunk]):
                lines, band = _edge_band(
                    swapped_term, index, picked, column_windows, row_windows, swapped_kernel, edge, pool
                )
                pooled.transpose(1, 2)[picked, lines] = band
            features.append(self.content_feat_layer[2:](pooled.permute(0, 3, 1, 2)))
        return torch.cat(features)


def _pooled_inside(windows: torch.Tensor) -> torch.Tensor:
    """(k, n/2): 1 where both first-layer lines a pooled line covers see only the box's run, else 0."""
    inside = windows.amin(-1)
    pooled_lines = inside.shape[1] // 2
    return inside[:, : 2 * pooled_lines].unflatten(1, (pooled_lines, 2)).amin(-1)


def _run_edges(factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first cell of each row's run of ones and the cell after it (0 and 0 for an empty run)."""
    occupied = factor > 0
    first = occupied.to(torch.int64).argmax(1)
    return first, first + occupied.sum(1)


def _edge_band(
    heat_term: torch.Tensor,
    index: torch.Tensor,
    picked: torch.Tensor,
    own_windows: torch.Tensor,
    cross_windows: torch.Tensor,
    kernel: torch.Tensor,
    edge: torch.Tensor,
    pool: nn.Module,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled first layer, exactly, on the pooled lines (along dim 1 of ``heat_term``) whose
    windows an edge of each crop's box at cell ``edge`` crosses: (lines (k, n), values (k, n, m/2, C)).
    ``picked`` is ``arange(k)[:, None]``, ``index`` each crop's image.

    An edge crosses the windows of the ``size - 1`` first-layer lines before it; they lie on at most
    ``size // 2 + 1`` pooled lines, taken from the first (kept inside the map, where every value is
    exact anyway).
    """
    size = kernel.shape[-1]
    count, pooled_lines = size // 2 + 1, heat_term.shape[1] // 2
    first = torch.div(edge - (size - 1), 2, rounding_mode="floor").clamp(0, pooled_lines - count)
    lines = 2 * first.unsqueeze(1) + torch.arange(2 * count, device=edge.device)  # (k, 2n) first-layer lines
    line_sums = torch.einsum("kyi,oij->kyjo", own_windows[picked, lines], kernel)  # (k, 2n, s, C)
    values = heat_term[index.unsqueeze(1), lines]  # (k, 2n, m, C)
    cross = cross_windows.unsqueeze(1).expand(-1, 2 * count, -1, -1)  # (k, 2n, m, s)
    values.view(-1, *values.shape[2:]).baddbmm_(cross.flatten(0, 1), line_sums.flatten(0, 1))  # fresh: in place
    band = pool(values.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return first.unsqueeze(1) + torch.arange(count, device=edge.device), band
