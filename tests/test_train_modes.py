"""``train_in_eval_mode``: ``--preset GAIC-official`` trains as GAIC's release (net.eval() once
before training: BatchNorm statistics as loaded, dropout off); the default recipe trains in
training mode. The buffers are compared with the freshly built model's, not with the code's own idea."""

from __future__ import annotations

import torch

import train_on_GAICD
from tests.conftest import small_training_options

FAST = small_training_options(96, 8) + ["--max_epoch", "1", "--warmup_epochs", "0", "--selection", "test"]
BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def _batch_norm_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{buffer}": getattr(module, buffer).detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, BATCH_NORMS)
        for buffer in ("running_mean", "running_var", "num_batches_tracked")
    }


def _train(monkeypatch, options: list[str]) -> tuple[dict, dict, dict, dict, list[bool]]:
    """Train one epoch; return the BatchNorm buffers and the weights before and after, and for every
    forward pass whether any module of the model was in training mode."""
    initial = {}
    modes: list[bool] = []
    build = train_on_GAICD.build_trainer

    def recording_build(*args, **kwargs):
        trainer = build(*args, **kwargs)
        initial["buffers"] = _batch_norm_buffers(trainer.core)
        initial["weights"] = {k: v.detach().clone() for k, v in trainer.core.named_parameters()}
        trainer.core.register_forward_pre_hook(
            lambda module, inputs: modes.append(any(m.training for m in module.modules()))
        )
        return trainer

    monkeypatch.setattr(train_on_GAICD, "build_trainer", recording_build)
    trainer = train_on_GAICD.main(options)
    weights = {k: v.detach() for k, v in trainer.core.named_parameters()}
    return initial["buffers"], _batch_norm_buffers(trainer.core), initial["weights"], weights, modes


def test_gaic_official_preset_trains_in_eval_mode(six_image_demo, tmp_path, monkeypatch):
    before, after, initial_weights, weights, modes = _train(
        monkeypatch, FAST + ["--data-root", six_image_demo, "--preset", "GAIC-official", "--exp_root", str(tmp_path)]
    )
    assert len(before) >= 3 * 10  # mobilenetv2 has dozens of BatchNorm layers
    assert before.keys() == after.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert not changed, f"BatchNorm buffers moved in eval-mode training: {changed[:5]}"
    assert modes and not any(modes)  # every forward, training steps included, ran in eval mode
    # it did train: the weights moved
    assert any(not torch.equal(initial_weights[name], weights[name]) for name in weights)


def test_default_recipe_updates_batch_norm_statistics(six_image_demo, tmp_path, monkeypatch):
    before, after, _, _, modes = _train(
        monkeypatch, FAST + ["--data-root", six_image_demo, "--backbone", "mobilenetv2", "--exp_root", str(tmp_path)]
    )
    tracked = [name for name in before if name.endswith("num_batches_tracked")]
    # six training images, one per step: every BatchNorm layer counted six batches
    assert tracked and all(int(after[name]) - int(before[name]) == 6 for name in tracked)
    assert any(not torch.equal(before[name], after[name]) for name in before if name.endswith("running_mean"))
    assert any(modes)
