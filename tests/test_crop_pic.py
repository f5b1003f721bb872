"""crop.py --user: crops the way one user of a personalized (PIC) checkpoint likes."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
from PIL import Image
from skimage import data

import crop
from config_GAICD import Config as GAICDConfig
from config_PIC import Config
from cropping_model import build_crop_model
from pic_embedding import PICModel


def _pic_checkpoint(path, embeddings):
    torch.manual_seed(0)
    cfg = Config(backbone="mobilenetv2", pretrained=False, image_size=(128, 128), keep_aspect_ratio=False)
    model = PICModel(cfg, loadweights=False)
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(cfg), "model_type": "PIC",
                "user_embeddings": embeddings}, path)
    return path


def test_users_with_opposite_tastes_rank_differently(tmp_path):
    dim = Config().embed_dim
    generator = torch.Generator().manual_seed(1)
    direction = torch.randn(dim, generator=generator) * 5
    checkpoint = _pic_checkpoint(tmp_path / "prior.pth", {"alice": direction, "bob": -direction})
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    rankings = {}
    for user in ("alice", "bob"):
        out = tmp_path / user
        assert crop.main([str(photo), "--checkpoint", str(checkpoint), "--user", user, "--out", str(out),
                          "--workers", "0", "--top-k", "1", "--human-box", "130,20,390,512"]) == 0
        report = json.loads((out / "astronaut.json").read_text())
        assert report["model"]["model_type"] == "PIC" and report["model"]["user"] == user
        rankings[user] = [tuple(entry["box"]) for entry in report["ranked"]]
        scores = [entry["score"] for entry in report["ranked"]]
        assert all(a >= b for a, b in zip(scores, scores[1:]))
    assert sorted(rankings["alice"]) == sorted(rankings["bob"])  # the same candidates...
    assert rankings["alice"] != rankings["bob"]  # ...ranked differently


def test_user_errors_are_clear(tmp_path, capsys):
    checkpoint = _pic_checkpoint(tmp_path / "prior.pth", {"alice": torch.zeros(Config().embed_dim)})
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((64, 96, 3), dtype=np.uint8)).save(photo)
    assert crop.main([str(photo), "--checkpoint", str(checkpoint), "--user", "carol", "--out", str(tmp_path)]) == 2
    assert "known users: alice" in capsys.readouterr().err
    plain = tmp_path / "plain.pth"
    cfg = GAICDConfig(backbone="mobilenetv2", pretrained=False)
    torch.save({"model": build_crop_model(cfg).state_dict(), "config": dataclasses.asdict(cfg),
                "model_type": "HCIC"}, plain)
    assert crop.main([str(photo), "--checkpoint", str(plain), "--user", "alice", "--out", str(tmp_path)]) == 2
    assert "not a personalized (PIC) checkpoint" in capsys.readouterr().err


def test_without_user_the_tool_says_how_it_scores(tmp_path, capsys):
    dim = Config().embed_dim
    checkpoint = _pic_checkpoint(tmp_path / "prior.pth", {"bob": torch.ones(dim), "alice": -torch.ones(dim)})
    photo = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()[::4, ::4]).save(photo)
    assert crop.main([str(photo), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--workers", "0",
                      "--top-k", "1"]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "without --user" in notes[0] and "objective score" in notes[0]
    assert "(alice, bob)" in notes[0]  # the users it could score as
    model = json.loads((tmp_path / "out" / "photo.json").read_text())["model"]
    assert model["user"] is None and model["scored_as"].startswith("objective score")
