"""The published PIC model (``pic_model``) against the official release's outputs.

The reference is ``official_fixtures/pic_forward_fixture.pt``: the release's prior model
(``persionality_crop_model_multi_scale_shared``) run on a real GAICD photo with weights regenerated
by the rule of the fixture's README (``release_weights``, written out in test_gaic_official.py).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import config_PIC
import finetune_PIC
import pretrain_PIC
import prior_PIC
from convert_PIC_data import release_to_json
from cropping_dataset import DatasetError
from cropping_model import load_crop_model, official_pic_from_state_dict
from pic_dataset import load_pic_data
from pic_model import PICOfficialModel, is_official_pic_state_dict
from tests.conftest import require_shared
from tests.test_gaic_official import release_weights
from untils.checkpoint import CheckpointError, read_checkpoint
from untils.pic_format import pic_crop_image, pic_user_image
from untils.pic_recipe import evaluate_images, fidelity_rank_loss, rated_images
from untils.pic_release_layout import load_release_layout


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(require_shared("official_fixtures/pic_forward_fixture.pt"), weights_only=True)


@pytest.fixture(scope="module")
def official_state(fixture) -> dict[str, torch.Tensor]:
    return release_weights(fixture["state_dict_shapes"], fixture["weight_seed"])


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def test_parameter_names_and_shapes_match_the_release(fixture):
    state = PICOfficialModel().state_dict()
    assert len(state) == 342
    assert {name: tuple(value.shape) for name, value in state.items()} == {
        name: tuple(shape) for name, shape in fixture["state_dict_shapes"].items()
    }
    assert {name: str(value.dtype) for name, value in state.items()} == fixture["state_dict_dtypes"]


@pytest.mark.parametrize("prefix", ["", "module."])
def test_reproduces_the_official_outputs_through_the_loader(fixture, official_state, prefix, tmp_path):
    """From a file as the release saves it (a bare state_dict), through the one loader."""
    state = {prefix + name: value for name, value in official_state.items()}
    assert is_official_pic_state_dict(state)
    torch.save(state, tmp_path / "pic.pth")
    model = load_crop_model(tmp_path / "pic.pth")
    assert isinstance(model, PICOfficialModel) and not model.training
    assert model.cfg.variant == "official" and (model.num_users, model.num_positions) == (945, 24)
    crop_box = fixture["rois"][:, 1:].unsqueeze(0)
    with torch.no_grad():
        objective = model(fixture["gaic_image"], crop_box).score
        logits = model.user_logits(fixture["per_image"])
        scores = model(fixture["gaic_image"], crop_box, user_image=fixture["per_image"]).score
    assert objective.shape == scores.shape == (1, 24) and logits.shape == (1, 945)
    assert relative_error(objective[0], fixture["expected_objective_scores"]) < 1e-4
    assert relative_error(logits, fixture["expected_user_logits"]) < 1e-4
    assert relative_error(scores[0], fixture["expected_scores"]) < 1e-4


def test_recogniser_builds_the_model_and_refuses_others(fixture, official_state):
    model = official_pic_from_state_dict(official_state)
    with torch.no_grad():
        logits = model.user_logits(fixture["per_image"])
    assert relative_error(logits, fixture["expected_user_logits"]) < 1e-4
    conv1d = {name: value for name, value in official_state.items() if not name.startswith("FC_layers_3")}
    assert not is_official_pic_state_dict(conv1d)  # no FC_layers_3 at all
    conv1d["FC_layers_3.weight"] = torch.zeros(1, 1, 39)
    assert is_official_pic_state_dict(conv1d)
    with pytest.raises(CheckpointError, match="Conv1d"):
        official_pic_from_state_dict(conv1d)
    shrunk = dict(official_state, **{"FC_layers_2.3.bias": torch.zeros(7)})
    with pytest.raises(CheckpointError, match="FC_layers_2.3"):
        official_pic_from_state_dict(shrunk)


def test_batches_padding_and_the_fixed_candidate_count(fixture, official_state):
    model = official_pic_from_state_dict(official_state)
    boxes = fixture["rois"][:, 1:]
    crop_box = torch.stack([boxes, torch.cat([boxes[:10], torch.zeros(14, 4)])])
    crop_valid = torch.arange(24).unsqueeze(0) < torch.tensor([[24], [10]])
    with torch.no_grad():
        scores = model(
            fixture["gaic_image"].repeat(2, 1, 1, 1),
            crop_box,
            None,
            crop_valid,
            user_image=fixture["per_image"].repeat(2, 1, 1, 1),
        ).score
    torch.testing.assert_close(scores[0], fixture["expected_scores"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores[1, :10], fixture["expected_scores"][:10], rtol=1e-4, atol=1e-4)
    assert torch.isneginf(scores[1, 10:]).all()
    with pytest.raises(ValueError, match="exactly 24"):
        model(fixture["gaic_image"], boxes[:20].unsqueeze(0), user_image=fixture["per_image"])


def test_preprocessing_reproduces_the_release_on_the_real_photo(fixture):
    photo = Image.open(require_shared("GAICD-sample/images/test/297406.jpg"))
    rgb = np.asarray(photo.convert("RGB"))
    image, ratio_w, ratio_h = pic_crop_image(rgb, bgr_order=True)
    assert image.shape == fixture["gaic_image"].shape
    # cv2 and PIL decode the JPEG alike to a grey level or so: 1/256 of a level is 0.02 here
    assert (image - fixture["gaic_image"]).abs().max().item() < 0.05
    width, height = fixture["original_size"]
    assert (ratio_w, ratio_h) == (352 / width, 256 / height)
    torch.testing.assert_close(pic_user_image(photo), fixture["per_image"], rtol=0, atol=2e-2)


def test_fidelity_rank_loss_equals_the_release(fixture):
    cases = fixture["loss_m_cases"]
    assert cases
    for entry in cases:
        loss = fidelity_rank_loss(entry["pred"], entry["target"])
        assert loss.item() == pytest.approx(float(entry["loss_m"]), rel=1e-5, abs=1e-7)


def test_fidelity_rank_loss_hand_computed_pair():
    # one pair, prediction difference 0 -> probability 1/2, target order 1: 1 - (sqrt(.5) + sqrt(0))
    loss = fidelity_rank_loss(torch.tensor([0.3, 0.3]), torch.tensor([2.0, 1.0]))
    assert loss.item() == pytest.approx(1 - np.sqrt(0.5 + 1e-8) - np.sqrt(1e-8), abs=1e-6)
    with pytest.raises(ValueError, match="two or more"):
        fidelity_rank_loss(torch.tensor([1.0]), torch.tensor([1.0]))


# ----------------------------------------------------------------------------------------------
# The release's CSV layout, and the three official stages trained end to end on it
# ----------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as stream:
        return list(csv.reader(stream))


def test_release_layout_round_trip(pic_release_root, tmp_path):
    release_dir = pic_release_root / "PIC_release"
    rows = read_rows(release_dir / "prior" / "centred-00_train.csv")
    assert rows[0] == ["name", "bbox", "score"] and len(rows) > 24
    assert rows[1][1].startswith("[") and rows[1][1].endswith("]") and len(rows[1][1].split(",")) == 4
    release = load_release_layout(str(release_dir), positions=24)
    data = load_pic_data(config_PIC.Config(data_root=str(pic_release_root)))
    assert release.train_users == sorted(data.train_users) and sorted(release.pretrain) == sorted(data.train_users)
    split = release.finetune[2]["centred-01"]
    assert len(split.train) == 2 and len(split.val) == 4 and not set(split.train) & set(split.val)
    for user in data.train_users:  # a CSV holds exactly the user's boxes and scores, in file order
        for name, entry in {**release.prior[user].train, **release.prior[user].val}.items():
            np.testing.assert_allclose(entry.boxes, data.annotations[user][name].boxes)
            np.testing.assert_allclose(entry.scores, data.annotations[user][name].scores)
    back = release_to_json(release, str(tmp_path))
    again = load_pic_data(config_PIC.Config(data_root=str(tmp_path)))
    assert back.endswith("PIC") and again.train_users == sorted(data.train_users)
    for user in data.train_users:
        assert sorted(again.images_of(user)) == sorted(data.images_of(user))


def test_release_layout_reports_every_problem_at_once(pic_release_root, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(pic_release_root / "PIC_release", broken)
    path = broken / "prior" / "thirds-00_train.csv"
    rows = read_rows(path)
    rows[3][1] = "[1,2,3]"
    rows[5][0] = "no-such-image.jpg"
    with open(path, "w", newline="") as stream:
        csv.writer(stream).writerows(rows)
    (broken / "prior" / "tight-00_val.csv").unlink()
    with pytest.raises(DatasetError) as error:
        load_release_layout(str(broken), positions=24)
    message = str(error.value)
    assert f"user thirds-00, {path}, row 4: bbox" in message
    assert f"user thirds-00, {path}, row 6: image" in message
    assert "user tight-00" in message and "tight-00_val.csv: file missing" in message


def test_three_official_stages_train_end_to_end(pic_release_root, tmp_path):
    common = ["--data-root", str(pic_release_root), "--exp_root", str(tmp_path), "--seed", "0"]
    # the generated data has no GAICD: the objective branch learns the training users' mean scores
    pretrained = pretrain_PIC.main(common + ["--pretrained", "false", "--max_epoch", "1", "--objective_set", "PIC"])
    content = read_checkpoint(pretrained["checkpoint"])
    assert content["config"]["variant"] == "official" and content["users"] == sorted(
        ["centred-00", "headroom-00", "thirds-00", "tight-00"]
    )
    prior = prior_PIC.main(
        ["--checkpoint", pretrained["checkpoint"], "--official_prior_epochs", "1", "--no-progress"] + common[:4]
    )
    assert np.isfinite(prior["best"]["srcc"])
    result = finetune_PIC.main(
        [
            "--checkpoint",
            prior["checkpoint"],
            "--finetune_images",
            "2",
            "--official_finetune_epochs",
            "1",
            "--no-progress",
        ]
        + common[:4]
    )
    assert {row["model"] for row in result["rows"]} == {"generic", "prior", "finetuned"}
    assert {row["user"] for row in result["rows"]} == {"centred-01", "headroom-01", "thirds-01", "tight-01"}
    user_file = Path(result["exp_path"]) / "users" / "centred-01.pth"
    model = load_crop_model(str(user_file))
    assert isinstance(model, PICOfficialModel) and model.num_users == 4 and model.num_positions == 24
    release = load_release_layout(str(pic_release_root / "PIC_release"), positions=24)
    test_images = rated_images(release.image_dir, release.finetune[2]["centred-01"].val)
    reference = next(row for row in result["rows"] if row["user"] == "centred-01" and row["model"] == "finetuned")
    assert round(100 * evaluate_images(model, test_images)["srcc"], 2) == pytest.approx(reference["srcc"], abs=0.01)
