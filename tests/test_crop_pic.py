"""crop.py --user: crops the way one user of a personalized (PIC) checkpoint likes, for both variants."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import crop
from config_GAICD import Config as GAICDConfig
from config_PIC import Config
from cropping_model import build_crop_model
from pic_model import PICModel, build_official_model
from untils.checkpoint import config_to_dict
from untils.pic_format import fixed_views


def _pic_checkpoint(path, embeddings):
    torch.manual_seed(0)
    cfg = Config(backbone="mobilenetv2", pretrained=False, image_size=(128, 128), keep_aspect_ratio=False)
    model = PICModel(cfg, loadweights=False)
    torch.save(
        {
            "model": model.state_dict(),
            "config": dataclasses.asdict(cfg),
            "model_type": "PIC",
            "user_embeddings": embeddings,
        },
        path,
    )
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
        assert (
            crop.main(
                [
                    str(photo),
                    "--checkpoint",
                    str(checkpoint),
                    "--user",
                    user,
                    "--out",
                    str(out),
                    "--workers",
                    "0",
                    "--top-k",
                    "1",
                    "--human-box",
                    "130,20,390,512",
                ]
            )
            == 0
        )
        report = json.loads((out / "astronaut.json").read_text())
        assert report["model"]["model_type"] == "PIC" and report["model"]["user"] == user
        rankings[user] = [tuple(entry["box"]) for entry in report["results"][0]["ranked"]]
        scores = [entry["score"] for entry in report["results"][0]["ranked"]]
        assert all(a >= b for a, b in zip(scores, scores[1:], strict=False))
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
    torch.save(
        {"model": build_crop_model(cfg).state_dict(), "config": dataclasses.asdict(cfg), "model_type": "HCIC"}, plain
    )
    assert crop.main([str(photo), "--checkpoint", str(plain), "--user", "alice", "--out", str(tmp_path)]) == 2
    assert "not a personalized (PIC) checkpoint" in capsys.readouterr().err


def test_without_user_the_tool_says_how_it_scores(tmp_path, capsys):
    dim = Config().embed_dim
    checkpoint = _pic_checkpoint(tmp_path / "prior.pth", {"bob": torch.ones(dim), "alice": -torch.ones(dim)})
    photo = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()[::4, ::4]).save(photo)
    assert (
        crop.main(
            [
                str(photo),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(tmp_path / "out"),
                "--workers",
                "0",
                "--top-k",
                "1",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "without --user" in notes[0] and "objective score" in notes[0]
    assert "(alice, bob)" in notes[0]  # the users it could score as
    model = json.loads((tmp_path / "out" / "photo.json").read_text())["model"]
    assert model["user"] is None and model["scored_as"].startswith("objective score")


# ----------------------------------------------------------------------------------------------
# The official variant (pic_model.PICOfficialModel): fixed views, one personal offset per position
# ----------------------------------------------------------------------------------------------

IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _official_checkpoint(path, stage, user=None, num_positions=24, position_head="linear"):
    """A small official model saved as prior_PIC.py ("prior"), finetune_PIC.py ("finetuned", with its
    user) or pretrain_PIC.py ("pretrain") save it, or as the release does (stage None: a bare state_dict).
    ``position_head`` conv1d: the release's fine-tuning model (945 users, 24 positions)."""
    torch.manual_seed(0)
    users = 945 if position_head == "conv1d" else 6
    cfg = Config(
        variant="official",
        backbone="mobilenetv2",
        pretrained=False,
        num_users=users,
        num_positions=num_positions,
        position_head=position_head,
    )
    model = build_official_model(cfg).eval()
    with torch.no_grad():  # well apart offsets: a crop scored with another position's offset shows
        if position_head == "linear":
            model.FC_layers_3[0].bias.copy_(torch.linspace(-3, 3, num_positions))
        else:
            model.FC_layers_3.weight.mul_(30)
    content = {"model": model.state_dict(), "config": config_to_dict(cfg), "model_type": "PIC", "stage": stage}
    if user is not None:
        content["user"] = user
    torch.save(model.state_dict() if stage is None else content, path)
    return model


def _photo(path):
    Image.fromarray(np.ascontiguousarray(data.astronaut()[100:420, 16:496])).save(path)  # 480x320
    return path


def _release_scores(model, rgb, personal, bgr=False):
    """The release's scores of the fixed views, in float64, inputs prepared here as its test code does:
    cv2 bilinear resize (shorter side 256, sides multiples of 32) / 256, ImageNet mean/std (on the
    channels in cv2's BGR order with ``bgr``, as the release reads photos: its own files); boxes
    scaled with x1, y1 floored, x2, y2 ceiled; the whole photo at 256x256 (PIL bilinear) / 255;
    score = objective + FC_layers_3(user logits)[position]."""
    height, width = rgb.shape[:2]
    scale = 256 / min(width, height)
    resized_w, resized_h = round(width * scale / 32) * 32, round(height * scale / 32) * 32
    channels = np.ascontiguousarray(rgb[..., ::-1]) if bgr else rgb
    pixels = (cv2.resize(channels, (resized_w, resized_h)).astype(np.float64) / 256 - IMAGENET_MEAN) / IMAGENET_STD
    user = (
        np.asarray(Image.fromarray(rgb).resize((256, 256), Image.BILINEAR), dtype=np.float64) / 255 - IMAGENET_MEAN
    ) / IMAGENET_STD
    boxes = np.asarray(fixed_views(width, height), dtype=np.float64)
    boxes = boxes * [resized_w / width, resized_h / height, resized_w / width, resized_h / height]
    boxes = np.concatenate([np.floor(boxes[:, :2]), np.ceil(boxes[:, 2:])], axis=1)
    model = model.double()
    with torch.no_grad():
        scores = model.objective_scores(
            torch.from_numpy(pixels.transpose(2, 0, 1)).unsqueeze(0), torch.from_numpy(boxes).unsqueeze(0)
        )[0]
        if personal:
            logits = model.user_logits(torch.from_numpy(user.transpose(2, 0, 1).copy()).unsqueeze(0))[0]
            if isinstance(model.FC_layers_3, torch.nn.Conv1d):  # the release's fine-tuning head
                window = model.FC_layers_3.weight.flatten()
                scores = scores + torch.stack([window @ logits[39 * p : 39 * p + 40] for p in range(24)])
                scores = scores + model.FC_layers_3.bias
            else:
                scores = scores + model.FC_layers_3(logits)
    return scores


def _crop_report(photo, checkpoint, out, top_k, options):
    """The JSON report of crop.py on ``photo`` (no workers, the ``top_k`` best crops written), which must succeed."""
    common = ["--workers", "0", "--top-k", str(top_k)]
    assert crop.main([str(photo), "--checkpoint", str(checkpoint), "--out", str(out), *common, *options]) == 0
    return json.loads((out / f"{photo.stem}.json").read_text())


def _assert_release_scores(report, model, photo, personal, bgr):
    """The report ranks the 24 fixed views once each, with the release's scores (:func:`_release_scores`)."""
    views = fixed_views(480, 320)
    ranked = {tuple(entry["box"]): entry["score"] for entry in report["results"][0]["ranked"]}
    assert len(report["results"][0]["ranked"]) == len(ranked) == 24 and set(ranked) == {tuple(view) for view in views}
    expected = _release_scores(model, np.asarray(Image.open(photo).convert("RGB")), personal, bgr=bgr)
    written = torch.tensor([ranked[tuple(view)] for view in views], dtype=torch.float64)  # in fixed-view order
    assert (written - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_fixed_views_are_the_hand_computed_ones():
    views = fixed_views(480, 320)  # 95% of 480x320 is 456x304: 24 and 16 pixels to spare
    assert len(views) == 24
    assert views[:3] == [[0, 4, 456, 308], [12, 4, 468, 308], [24, 4, 480, 308]]
    assert views[5] == [24, 12, 480, 316]


@pytest.mark.parametrize(
    "stage, user, personal",
    [("prior", None, True), ("finetuned", "alice", True), (None, None, True), ("pretrain", None, False)],
)
def test_official_checkpoints_score_the_fixed_views_as_the_release(tmp_path, capsys, stage, user, personal):
    model = _official_checkpoint(tmp_path / "model.pth", stage, user)
    photo = _photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    report = _crop_report(photo, tmp_path / "model.pth", out, 2, ["--user", user] if user else [])
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert report["results"][0]["candidates"].startswith("PIC fixed views: the 24 crops")
    assert report["model"]["user"] == user and report["model"]["image_size"] == [256, 256]
    scored_as = report["model"]["scored_as"]
    assert len(notes) == (0 if user else 1)
    if not personal:
        assert scored_as.startswith("objective score") and "objective score alone" in notes[0]
    elif user:
        assert scored_as.startswith("user alice: ") and "offset from this photo's user logits" in scored_as
    else:
        assert "offset from this photo's user logits" in scored_as and "without --user" in notes[0]

    assert report["model"]["channel_order"] == ("bgr" if stage is None else "rgb")
    _assert_release_scores(report, model, photo, personal, bgr=stage is None)
    scores = [entry["score"] for entry in report["results"][0]["ranked"]]
    assert scores == sorted(scores, reverse=True)
    best = report["results"][0]["crops"][0]
    assert best["box"] == report["results"][0]["ranked"][0]["box"]
    assert Image.open(out / best["file"]).size == (best["width"], best["height"])


@pytest.mark.parametrize(
    "stage, user, options, expected",
    [
        ("finetuned", "alice", ["--user", "bob"], "is the official PIC model fine-tuned to user alice"),
        ("prior", None, ["--user", "alice"], "is the official PIC prior model, which holds no per-user state"),
        (None, None, ["--user", "alice"], "a state_dict of PIC's release, which records no user"),
        ("prior", None, ["--aspect-ratio", "4:3"], "crops only among its 24 fixed views"),
        ("finetuned", "alice", ["--user", "alice", "--aspect-ratio", "1:1"], "crops only among its 24 fixed views"),
    ],
)
def test_official_checkpoints_refuse_what_they_cannot_do(tmp_path, capsys, stage, user, options, expected):
    _official_checkpoint(tmp_path / "model.pth", stage, user)
    photo = _photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    assert crop.main([str(photo), "--checkpoint", str(tmp_path / "model.pth"), "--out", str(out)] + options) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not out.exists()


def test_official_checkpoint_with_other_positions_is_refused(tmp_path, capsys):
    _official_checkpoint(tmp_path / "model.pth", "prior", num_positions=10)
    photo = _photo(tmp_path / "photo.png")
    assert crop.main([str(photo), "--checkpoint", str(tmp_path / "model.pth"), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "its 10 position offsets do not fit the 24 fixed views" in lines[0], lines


def test_cropper_api_refuses_a_ratio_for_an_official_checkpoint(tmp_path):
    _official_checkpoint(tmp_path / "model.pth", "prior")
    with pytest.warns(UserWarning, match="without --user"):
        cropper = crop.Cropper(str(tmp_path / "model.pth"), device="cpu")
    assert cropper.candidates().startswith("PIC fixed views")
    with pytest.raises(ValueError, match="fixed views"):
        cropper.rank(_photo(tmp_path / "photo.png"), aspect_ratios="1:1")


@pytest.mark.parametrize("order", [None, "rgb", "bgr"])
def test_a_fine_tuned_release_file_crops_without_user(tmp_path, capsys, order):
    """A bare state_dict of the release's fine-tuning model (Conv1d FC_layers_3) is one user's
    model: crop.py ranks with its offsets, on BGR photos unless --channel-order says otherwise."""
    model = _official_checkpoint(tmp_path / "model.pth", None, position_head="conv1d")
    photo = _photo(tmp_path / "photo.png")
    options = ["--channel-order", order] if order else []
    report = _crop_report(photo, tmp_path / "model.pth", tmp_path / "out", 1, options)
    assert report["model"]["channel_order"] == (order or "bgr") and report["model"]["user"] is None
    _assert_release_scores(report, model, photo, True, bgr=order != "rgb")


def test_channel_order_bgr_is_refused_for_other_models(tmp_path, capsys):
    checkpoint = _pic_checkpoint(tmp_path / "prior.pth", {"alice": torch.zeros(Config().embed_dim)})
    photo = _photo(tmp_path / "photo.png")
    assert (
        crop.main(
            [str(photo), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--channel-order", "bgr"]
        )
        == 2
    )
    assert "only official PIC models" in capsys.readouterr().err
