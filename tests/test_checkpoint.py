"""Checkpoints: atomic writes, official bare state_dicts (and their old key names), clear errors."""
from __future__ import annotations

import os

import pytest
import torch

import test as evaluation
from config_GAICD import Config
from cropping_model import build_crop_model
from untils.checkpoint import CheckpointError, load_model_weights, read_checkpoint, save_atomic


def _model(**overrides):
    torch.manual_seed(0)
    return build_crop_model(Config(backbone="mobilenetv2", pretrained=False, **overrides))


def test_save_atomic_replaces_whole_files_only(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_atomic({"a": torch.ones(2)}, str(path))

    def broken_save(obj, stream):
        stream.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"a": torch.zeros(2)}, str(path))
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["ckpt.pth"]  # no temporary file left behind


def test_official_bare_state_dict_with_old_names_loads(tmp_path):
    source = _model()
    state = {name.replace("partition_aware.group_conv", "partition_aware.p_conv"): value
             for name, value in source.state_dict().items()}
    path = tmp_path / "official.pth"
    torch.save(state, path)
    model, cfg = evaluation.load_model(str(path), {"backbone": "mobilenetv2"}, torch.device("cpu"))
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert cfg.backbone == "mobilenetv2" and not model.training


def test_mismatched_checkpoint_names_the_parameters(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(_model(partition_aware_type=2).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"shape differs: partition_aware\.group_conv\.bias, partition_aware\.group_conv\.weight"):
        load_model_weights(_model(), str(path))
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        read_checkpoint(str(tmp_path / "junk.pth"))
