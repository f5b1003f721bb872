"""Checkpoints: atomic writes, official bare state_dicts (and their old key names), clear errors,
RNG state that loads as plain data."""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from config_GAICD import Config
from cropping_model import build_crop_model, load_crop_model
from untils.backbones import BackboneWeightsError, build_backbone
from untils.checkpoint import (
    MAX_CHECKPOINT_GB_ENV,
    CheckpointError,
    config_to_dict,
    load_model_weights,
    read_checkpoint,
    save_atomic,
)
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
    state = {
        name.replace("partition_aware.group_conv", "partition_aware.p_conv"): value
        for name, value in source.state_dict().items()
    }
    path = tmp_path / "official.pth"
    torch.save(state, path)
    model = load_crop_model(str(path), "cpu", {"backbone": "mobilenetv2"})
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert model.cfg.backbone == "mobilenetv2" and not model.training


def test_mismatched_checkpoint_names_the_parameters(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(_model(partition_aware_type=2).state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"shape differs: partition_aware\.group_conv\.bias, partition_aware\.group_conv\.weight"
    ):
        load_model_weights(_model(), str(path))
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"not a PyTorch checkpoint \(zip\) file: .*junk.pth"):
        read_checkpoint(str(tmp_path / "junk.pth"))


def test_release_state_dict_forms_load_weights_only(tmp_path):
    """DataParallel ``module.`` names, ``{"state_dict": ...}`` (.pth.tar) and the legacy file format."""
    source = _model()
    state = OrderedDict((f"module.{name}", value) for name, value in source.state_dict().items())
    forms = {
        "parallel.pth": (state, True),
        "release.pth.tar": ({"state_dict": state, "epoch": 7}, True),
        "legacy.pth": (state, False),
    }
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
    torch.save(
        {
            "model": {"w": torch.ones(1)},
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        },
        path,
    )
    expected = _draws()
    with pytest.raises(CheckpointError, match=r"holds objects other than tensors.*numpy.*--trust-checkpoint"):
        read_checkpoint(str(path))
    set_rng_state(read_checkpoint(str(path), trusted=True)["rng"])
    assert _draws() == expected


# ----- files that are refused before torch reads them -----------------------------------------------
def _deflated_copy(source, target):
    """``source`` (a checkpoint torch wrote, entries stored) with every entry deflated: torch reads
    such a file, unpacking each entry whole into memory."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as packed:
        for entry in original.infolist():
            packed.writestr(entry.filename, original.read(entry.filename))


def test_zip_that_inflates_absurdly_is_refused_before_reading(tmp_path, monkeypatch):
    zeros = tmp_path / "zeros.pth"
    torch.save({"model": {"w": torch.zeros(16 * 2**20)}}, zeros)  # 64 MiB of zeros
    bomb = tmp_path / "bomb.pth"
    _deflated_copy(zeros, bomb)
    assert os.path.getsize(bomb) < 2**20  # the crafted file is small on disk

    def must_not_run(*args, **kwargs):
        raise AssertionError("torch.load was reached")

    monkeypatch.setattr(torch, "load", must_not_run)
    with pytest.raises(CheckpointError, match=r"bomb\.pth.*inflate") as refused:
        read_checkpoint(str(bomb))
    assert "\n" not in str(refused.value)


def test_checkpoint_larger_than_the_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"  # 1 MB of tensor data
    for file_format in (True, False):  # zip (the unpacked size counts) and legacy (the file's size)
        torch.save({"model": {"w": torch.ones(250_000)}}, path, _use_new_zipfile_serialization=file_format)
        assert torch.equal(read_checkpoint(str(path))["model"]["w"], torch.ones(250_000))  # under the default
        with pytest.raises(CheckpointError, match=r"weights\.pth.*over the 0\.0005 GB limit"):
            read_checkpoint(str(path), max_gb=0.0005)
        monkeypatch.setenv(MAX_CHECKPOINT_GB_ENV, "0.0005")
        with pytest.raises(CheckpointError, match=rf"weights\.pth.*{MAX_CHECKPOINT_GB_ENV}=N raises it"):
            read_checkpoint(str(path))
        assert read_checkpoint(str(path), max_gb=0.01)["model"]["w"].numel() == 250_000  # the parameter wins
        monkeypatch.setenv(MAX_CHECKPOINT_GB_ENV, "lots")
        with pytest.raises(CheckpointError, match=rf"{MAX_CHECKPOINT_GB_ENV}='lots' must be a positive number"):
            read_checkpoint(str(path))
        monkeypatch.delenv(MAX_CHECKPOINT_GB_ENV)


def test_directory_and_raw_pickle_are_named_for_what_they_are(tmp_path):
    (tmp_path / "folder.pth").mkdir()
    with pytest.raises(CheckpointError, match=r"'.*folder\.pth' is a directory"):
        read_checkpoint(str(tmp_path / "folder.pth"))
    for protocol in (2, 4):  # 4 made torch say "Unsupported operand 149"
        path = tmp_path / f"raw{protocol}.pkl"
        path.write_bytes(pickle.dumps({"model": {"w": [1.0, 2.0]}}, protocol=protocol))
        with pytest.raises(CheckpointError) as refused:
            read_checkpoint(str(path))
        assert str(refused.value) == f"checkpoint is not a PyTorch checkpoint (zip) file: {path}"


def test_errors_never_advise_loading_unsafely(tmp_path):
    """torch's own messages suggest weights_only=False, which would run the file's code."""
    pickled = tmp_path / "pickled.pth"  # a zip whose data.pkl uses an opcode the safe unpickler lacks
    torch.save({"model": {"w": torch.ones(1)}}, tmp_path / "plain.pth")
    with zipfile.ZipFile(tmp_path / "plain.pth") as original, zipfile.ZipFile(pickled, "w") as changed:
        for entry in original.infolist():
            data = original.read(entry.filename)
            changed.writestr(
                entry.filename, pickle.dumps({"w": 1}, protocol=4) if entry.filename.endswith("data.pkl") else data
            )
    numpy_weights = tmp_path / "numpy.pth"
    torch.save({"features.0.0.weight": np.zeros(2)}, numpy_weights)
    errors = []
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(str(pickled))
    errors.append(str(refused.value))
    for weights in (numpy_weights, pickled):  # --backbone_weight_path called torch.load itself
        with pytest.raises(BackboneWeightsError) as refused:
            build_backbone("mobilenetv2", pretrained=True, weight_path=str(weights))
        errors.append(str(refused.value))
    for message in errors:
        assert "weights_only" not in message and "\n" not in message, message
    assert str(pickled) in errors[0] and str(numpy_weights) in errors[1] and str(pickled) in errors[2]


def test_backbone_weight_file_of_other_content_gets_one_line(tmp_path):
    not_tensors = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(BackboneWeightsError, match=r"list\.pth' does not hold a state_dict"):
        build_backbone("mobilenetv2", pretrained=True, weight_path=str(not_tensors))
    with pytest.raises(BackboneWeightsError, match=r"'.*' is a directory"):
        build_backbone("mobilenetv2", pretrained=True, weight_path=str(tmp_path))


# ----- a saved config with bad fields -----------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("reduced_dim", "32", r"reduced_dim='32' is not of the option's type \(int\)"),
        ("image_size", 256, r"image_size=256 is not of the option's type \(tuple\[int, int\]\)"),
        ("loss_type", ["L1Loss", 3], r"loss_type=\['L1Loss', 3\]"),
        ("use_partition_aware", 1, r"use_partition_aware=1 is not of the option's type \(bool\)"),
        ("backbone", "alexnet", r"config option backbone='alexnet' is not one of"),
        ("partition_aware_type", 5, r"config option partition_aware_type=5 is not one of"),
    ],
)
def test_saved_config_with_a_bad_option_names_the_file_and_option(field, value, expected, tmp_path):
    cfg = Config(backbone="mobilenetv2", pretrained=False)
    path = tmp_path / "odd-config.pth"
    save_atomic(
        {
            "model": build_crop_model(cfg).state_dict(),
            "config": {**config_to_dict(cfg), field: value},
            "model_type": "HCIC",
        },
        str(path),
    )
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: .*{expected}") as refused:
        load_crop_model(str(path))
    assert "\n" not in str(refused.value)


def test_saved_config_that_is_not_a_dict_is_named(tmp_path):
    path = tmp_path / "list-config.pth"
    save_atomic({"model": {"w": torch.ones(1)}, "config": ["vgg16"], "model_type": "HCIC"}, str(path))
    with pytest.raises(CheckpointError, match=r"list-config\.pth: its saved config is a list, not a dict"):
        load_crop_model(str(path))
