"""Few-shot fine-tuning of the embedding variant's preference module to one user (the one way,
used by ``finetune_PIC.py`` and by ``pic_model.personalize_from_ratings``), and the personal
checkpoint it writes. The preference module is taken as it comes (``pic_model.PreferenceModule``),
so this module needs nothing of the top level.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from untils.checkpoint import config_to_dict
from untils.pic_features import UserImage, embed_user, evaluate_user, user_scores
from untils.score_losses import group_score_loss


@dataclass
class FinetuneResult:
    """A fine-tuned user: their embedding and preference module, the chosen step and its validation SRCC."""

    embedding: torch.Tensor
    preference: nn.Module
    step: int
    val_srcc: float
    history: list[dict[str, float]]


def prior_pull_loss(current: Sequence[torch.Tensor], prior: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean squared distance of fine-tuned tensors from their prior values, summed over tensors."""
    total = current[0].new_zeros(())
    for now, before in zip(current, prior, strict=True):
        total = total + torch.mean((now - before.detach()) ** 2)
    return total


def _srcc(preference: nn.Module, embedding: torch.Tensor, examples: Sequence[UserImage]) -> float:
    value = evaluate_user(preference, embedding, examples)["srcc"]
    return -float("inf") if np.isnan(value) else value


def finetune_user(
    preference: Any,
    support: Sequence[UserImage],
    val: Sequence[UserImage],
    cfg: Any,
    generator: torch.Generator,
    score_mean: float,
    on_step: Callable[[int], None] | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``preference`` and a user embedding (started from the support images'
    evidence) on ``support``; keep the step with the best SRCC on ``val``. ``preference`` itself
    is left as it was.

    ``cfg`` (a ``config_PIC.Config``) gives ``finetune_scope`` (embedding: the embedding only;
    head: also the taste MLP and user weights), ``finetune_steps`` Adam steps at ``finetune_lr``,
    each over all support images in a random view (of those the images have: a person's own
    ratings have no mirrored view, their taste may not be symmetric), loss ``loss_type`` (``score_mean`` for
    WeightedL1Loss) + ``finetune_reg`` x the pull towards the prior values, validated every
    ``finetune_eval_every`` steps. ``on_step(step)`` is called after each step.
    """
    tuned_preference = copy.deepcopy(preference).requires_grad_(False)
    with torch.no_grad():
        start = embed_user(tuned_preference, support)
    embedding = start.clone().requires_grad_(True)
    tuned, anchors = [embedding], [start]
    if cfg.finetune_scope == "head":
        head = [*tuned_preference.taste.parameters(), *tuned_preference.user_weights.parameters()]
        for parameter in head:
            parameter.requires_grad_(True)
        tuned += head
        anchors += [parameter.detach().clone() for parameter in head]
    optimizer = torch.optim.Adam(tuned, lr=cfg.finetune_lr)
    best_srcc = _srcc(tuned_preference, start, val)
    best = (0, start.clone(), copy.deepcopy(tuned_preference.state_dict()))
    history = [{"step": 0, "loss": float("nan"), "val_srcc": best_srcc}]
    view_count = min(example.objective.shape[0] for example in support)  # 1: no mirrored view
    for step in range(1, cfg.finetune_steps + 1):
        views = torch.randint(view_count, (len(support),), generator=generator).tolist()
        losses = [
            group_score_loss(
                user_scores(tuned_preference, embedding, example, view),
                example.scores,
                cfg.loss_type,
                score_mean,
                cfg.rank_loss_weighting,
            )
            for example, view in zip(support, views, strict=True)
        ]
        loss = torch.stack(losses).mean() + cfg.finetune_reg * prior_pull_loss(tuned, anchors)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % cfg.finetune_eval_every == 0 or step == cfg.finetune_steps:
            srcc = _srcc(tuned_preference, embedding.detach(), val)
            history.append({"step": step, "loss": loss.item(), "val_srcc": srcc})
            if srcc > best_srcc:
                best_srcc = srcc
                best = (step, embedding.detach().clone(), copy.deepcopy(tuned_preference.state_dict()))
        if on_step is not None:
            on_step(step)
    step, best_embedding, state = best
    tuned_preference.load_state_dict(state)
    return FinetuneResult(best_embedding, tuned_preference.requires_grad_(False), step, best_srcc, history)


def personal_checkpoint(
    model_state: Mapping[str, torch.Tensor],
    cfg: Any,
    user: str,
    result: FinetuneResult,
    prior_users: Mapping[str, torch.Tensor],
    finetune: Mapping[str, Any],
) -> dict:
    """The checkpoint of a model fine-tuned to ``user`` (``stage`` finetuned): the prior's weights
    ``model_state`` with the user's preference module, the user's embedding (with scope embedding
    also the prior's users, whose head is unchanged) and ``finetune`` (what it was tuned on)."""
    state = dict(model_state)
    state.update({f"preference.{key}": value for key, value in result.preference.state_dict().items()})
    embeddings = dict(prior_users) if cfg.finetune_scope == "embedding" else {}
    embeddings[user] = result.embedding
    return {
        "model": state,
        "config": config_to_dict(cfg),
        "model_type": "PIC",
        "stage": "finetuned",
        "user": user,
        "user_embeddings": {name: vector.tolist() for name, vector in embeddings.items()},
        "finetune": {"step": result.step, "val_srcc": result.val_srcc, **finetune},
    }
