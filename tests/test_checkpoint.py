"""Checkpoints: atomic writes, official bare state_dicts (and their old key names), clear errors,
RNG state that loads as plain data."""
from __future__ import annotations

import os
import random
from collections import OrderedDict

import numpy as np
import pytest
import torch

from config_GAICD import Config
from cropping_model import build_crop_model, load_crop_model
from untils.checkpoint import CheckpointError, load_model_weights, read_checkpoint, save_atomic
from untils.runtime import rng_state, seed_everything, set_rng_state


def _model(**overrides):
    torch.manual_seed(0)
    return build_crop_model(Config(backbone="mobilenetv2", pretrained=False, **overrides))


def test_save_atomic_replaces_whole_files_only(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_atomic({"a": torch.ones(2)}, str(path))

    def broken_save(obj, target):
        with open(target, "wb") as stream:
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
    model = load_crop_model(str(path), "cpu", {"backbone": "mobilenetv2"})
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert model.cfg.backbone == "mobilenetv2" and not model.training


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


def test_release_state_dict_forms_load_weights_only(tmp_path):
    """DataParallel ``module.`` names, ``{"state_dict": ...}`` (.pth.tar) and the legacy file format."""
    source = _model()
    state = OrderedDict((f"module.{name}", value) for name, value in source.state_dict().items())
    forms = {"parallel.pth": (state, True), "release.pth.tar": ({"state_dict": state, "epoch": 7}, True),
             "legacy.pth": (state, False)}
    for name, (content, zip_format) in forms.items():
        torch.save(content, tmp_path / name, _use_new_zipfile_serialization=zip_format)
        target = _model()
        for value in target.state_dict().values():
            value.zero_()  # so that only loading can make it equal the source
        load_model_weights(target, str(tmp_path / name))
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), (name, key)


def _draws() -> tuple:
    return (random.random(), np.random.randn(), np.random.rand(3).tolist(), torch.rand(3).tolist())


def test_rng_state_is_plain_data_and_restores_every_generator_exactly(tmp_path):
    seed_everything(5)
    np.random.randn(3)  # an odd number of normals: numpy holds a cached one, which must be restored
    path = tmp_path / "rng.pth"
    torch.save(rng_state(), path)
    expected = _draws()
    seed_everything(6)
    set_rng_state(torch.load(path, weights_only=True))
    assert _draws() == expected


def test_older_numpy_rng_state_is_refused_unless_trusted(tmp_path):
    """Our older checkpoints stored numpy's own state tuple (an ndarray): refused, then loaded on trust."""
    seed_everything(7)
    path = tmp_path / "old.pth"
    torch.save({"model": {"w": torch.ones(1)}, "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                                                       "torch": torch.get_rng_state()}}, path)
    expected = _draws()
    with pytest.raises(CheckpointError, match=r"holds objects other than tensors.*numpy.*--trust-checkpoint"):
        read_checkpoint(str(path))
    set_rng_state(read_checkpoint(str(path), trusted=True)["rng"])
    assert _draws() == expected
