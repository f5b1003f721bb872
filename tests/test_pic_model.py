"""PIC model: crop geometry, preference module, scoring API, checkpoints, and what fine-tuning may change."""

from __future__ import annotations

import math

import pytest
import torch

import config_PIC
from config_GAICD import MOS_MEAN
from cropping_model import build_crop_model, load_crop_model
from pic_model import GEOMETRY_DIM, PICModel, PreferenceModule, crop_geometry
from untils.checkpoint import CheckpointError, config_to_dict
from untils.pic_features import VIEWS, UserImage
from untils.pic_finetune import finetune_user


def tiny_cfg(**overrides) -> config_PIC.Config:
    options = dict(
        pretrained=False,
        num_users=3,
        reduced_dim=8,
        subjective_dim=6,
        embed_dim=4,
        taste_dim=5,
        preference_hidden=7,
        finetune_steps=6,
        finetune_eval_every=2,
        finetune_lr=0.1,
    )
    return config_PIC.Config(**{**options, **overrides})


@pytest.fixture(scope="module")
def model() -> PICModel:
    torch.manual_seed(0)
    return PICModel(tiny_cfg()).eval()


def batch_of_two() -> dict:
    crops = torch.tensor(
        [[[0.0, 0, 96, 64], [16, 8, 80, 64], [0, 0, 64, 48]], [[8.0, 0, 96, 56], [0, 0, 70, 64], [-1, -1, -1, -1]]]
    )
    return {
        "image": torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1)),
        "crop_box": crops,
        "human_box": torch.tensor([[[30.0, 10, 50, 64]], [[-1.0, -1, -1, -1]]]),
        "crop_valid": torch.tensor([[True, True, True], [True, True, False]]),
    }


def test_crop_geometry_hand_computed():
    # a 300x200 image, crop [60, 20, 300, 200] (240x180), person [120, 50, 180, 200] (60x150)
    got = crop_geometry(torch.tensor([60.0, 20, 300, 200]), torch.tensor([120.0, 50, 180, 200]), 300, 200)
    expected = [
        60 / 300,
        20 / 200,
        1.0,
        1.0,
        240 / 300,
        180 / 200,
        240 * 180 / 60000,
        math.log(240 / 180),
        1.0,
        (150 - 60) / 240,
        (125 - 20) / 180,
        30 / 180,
        0.0,
        150 / 180,
        60 / 240,
        1.0,
    ]
    assert got.shape == (GEOMETRY_DIM,)
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    # half the person cut off on the right; and no person at all
    cut = crop_geometry(torch.tensor([0.0, 0, 150, 200]), torch.tensor([120.0, 50, 180, 200]), 300, 200)
    assert cut[15].item() == pytest.approx(0.5)
    alone = crop_geometry(torch.tensor([60.0, 20, 300, 200]), torch.tensor([-1.0, -1, -1, -1]), 300, 200)
    torch.testing.assert_close(alone[:8], got[:8])
    assert alone[8:].abs().sum().item() == 0


def test_preference_module_shapes_and_set_embedding():
    torch.manual_seed(0)
    module = PreferenceModule(feature_dim=10, embed_dim=4, taste_dim=5, hidden=7)
    features = torch.randn(12, 10)
    evidence = module.evidence(features, torch.tensor([3, 7]))
    assert evidence.shape == (2, 20)
    torch.testing.assert_close(evidence[0, 10:], features[3] - features.mean(dim=0))
    rows = torch.randn(6, 20)
    embedding = module.embed(rows)
    assert embedding.shape == (4,)
    torch.testing.assert_close(module.embed(rows[torch.randperm(6)]), embedding)  # a set function
    assert module(features, embedding).shape == (12,)
    assert module(features.view(3, 4, 10), embedding).shape == (3, 4)
    module.set_feature_statistics(features)
    torch.testing.assert_close(module.normalise(features).mean(dim=0), torch.zeros(10), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="evidence of shape"):
        module.embed(torch.zeros(0, 20))


def user_scores(model: PICModel, batch: dict, user: str) -> torch.Tensor:
    """The model's scores of ``batch`` for ``user``."""
    with torch.no_grad():
        return model(batch["image"], batch["crop_box"], batch["human_box"], batch["crop_valid"], user=user).score


def test_generic_scores_are_the_objective_branch_and_user_scores_add_the_preference(model):
    batch = batch_of_two()
    with torch.no_grad():
        generic = model(batch["image"], batch["crop_box"], crop_valid=batch["crop_valid"]).score
        objective, features, index = model.crop_outputs(
            batch["image"], batch["crop_box"], batch["human_box"], batch["crop_valid"]
        )
    assert generic.shape == (2, 3) and generic[1, 2] == float("-inf")
    torch.testing.assert_close(objective, generic[batch["crop_valid"]])
    assert features.shape == (5, 6 + GEOMETRY_DIM) and index.tolist() == [0, 0, 0, 1, 1]
    # the geometry columns are the crops' geometry in the 96x64 input, the person of each image
    expected_geometry = crop_geometry(batch["crop_box"][1, 0], batch["human_box"][1, 0], 96, 64)
    torch.testing.assert_close(features[3, 6:], expected_geometry)
    model.user_embeddings = {"ann": torch.randn(4)}
    scores = user_scores(model, batch, "ann")
    with torch.no_grad():
        expected = objective + model.preference(features, model.user_embeddings["ann"])
    torch.testing.assert_close(scores[batch["crop_valid"]], expected)
    assert scores[1, 2] == float("-inf")
    with pytest.raises(KeyError, match="no embedding for user 'zed'.*ann"):
        user_scores(model, batch, "zed")


def test_pretraining_outputs_share_one_backbone_pass(model):
    batch = batch_of_two()
    rois = torch.tensor([[0.0, 0, 0, 64, 64], [1.0, 10, 0, 90, 60]])
    humans = torch.tensor([[30.0, 10, 50, 64], [-1.0, -1, -1, -1]])
    with torch.no_grad():
        score, logits = model.pretraining_outputs(batch["image"], batch["crop_box"], batch["crop_valid"], rois, humans)
        torch.testing.assert_close(
            score, model(batch["image"], batch["crop_box"], crop_valid=batch["crop_valid"]).score
        )
        torch.testing.assert_close(logits, model.user_logits(batch["image"], rois, humans))
    assert logits.shape == (2, 3)
    with pytest.raises(ValueError, match="no user classifier"):
        PICModel(tiny_cfg(num_users=0)).user_logits(batch["image"], rois, humans)


def test_checkpoint_round_trip_and_model_type(model, tmp_path):
    assert isinstance(build_crop_model(tiny_cfg(), "PIC"), PICModel)
    checkpoint = {
        "model": model.state_dict(),
        "config": config_to_dict(model.cfg),
        "model_type": "PIC",
        "user_embeddings": {"ann": [0.5, -1.0, 2.0, 0.0]},
    }
    torch.save(checkpoint, tmp_path / "user.pth")
    loaded = load_crop_model(str(tmp_path / "user.pth"))
    assert list(loaded.user_embeddings) == ["ann"]
    batch = batch_of_two()
    model.user_embeddings = {"ann": torch.tensor([0.5, -1.0, 2.0, 0.0])}
    torch.testing.assert_close(user_scores(loaded, batch, "ann"), user_scores(model, batch, "ann"))
    with pytest.raises(CheckpointError, match="does not fit the model built from its config"):
        load_crop_model({**checkpoint, "model_type": "GAIC"})


def test_config_rejects_what_pic_does_not_support():
    for options, message in (
        ({"backbone": "alexnet"}, "backbone"),
        ({"objective_set": "FCDB"}, "objective_set"),
        ({"position_head": "mlp"}, "position_head"),
        ({"channel_order": "grb"}, "channel_order"),
        ({"selection": "test"}, "selection"),
        ({"finetune_scope": "all"}, "finetune_scope"),
        ({"use_content_preserve": True}, "GAIC head"),
        ({"finetune_images": 0}, "finetune_images"),
        ({"user_test_fraction": 1.0}, "user_test_fraction"),
    ):
        with pytest.raises(ValueError, match=message):
            config_PIC.Config(pretrained=False, **options)
    cfg = config_PIC.Config(data_root="/data", pretrained=False)
    assert cfg.PIC_users == "/data/PIC/users.json" and cfg.PIC_anno == "/data/PIC/annotations"


def user_image(generator: torch.Generator, crops: int = 12, features: int = 10) -> UserImage:
    feats = torch.randn(VIEWS, crops, features, generator=generator)
    return UserImage(
        "x.jpg",
        torch.randn(VIEWS, crops, generator=generator),
        feats,
        torch.rand(crops, generator=generator) * 4 + 1,
        torch.randn(VIEWS, 3, 2 * features, generator=generator),
    )


@pytest.mark.parametrize("scope", ["embedding", "head"])
def test_finetuning_changes_only_what_its_scope_allows(scope):
    torch.manual_seed(0)
    preference = PreferenceModule(feature_dim=10, embed_dim=4, taste_dim=5, hidden=7)
    before = {name: value.clone() for name, value in preference.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    support = [user_image(generator) for _ in range(3)]
    cfg = tiny_cfg(finetune_scope=scope, finetune_steps=20, finetune_eval_every=1)
    with torch.no_grad():
        start = preference.embed(torch.cat([example.evidence[0] for example in support]))
    # validating on the support images makes some step better than the start
    result = finetune_user(preference, support, support, cfg, generator, MOS_MEAN)
    assert result.step > 0
    for name, value in preference.state_dict().items():
        torch.testing.assert_close(value, before[name])  # the prior is left as it was
    assert not torch.equal(result.embedding, start)
    changed = {name for name, value in result.preference.state_dict().items() if not torch.equal(value, before[name])}
    if scope == "embedding":
        assert changed == set()
    else:
        assert changed and all(name.startswith(("taste.", "user_weights.")) for name in changed)
    assert not any(parameter.requires_grad for parameter in result.preference.parameters())


@pytest.mark.parametrize("backbone", ["shufflenetv2", "vgg16"])
def test_other_backbones_give_the_same_outputs(backbone):
    torch.manual_seed(0)
    model = PICModel(tiny_cfg(backbone=backbone)).eval()
    batch = batch_of_two()
    with torch.no_grad():
        objective, features, index = model.crop_outputs(
            batch["image"], batch["crop_box"], batch["human_box"], batch["crop_valid"]
        )
    assert objective.shape == (5,) and features.shape == (5, 6 + GEOMETRY_DIM) and torch.isfinite(features).all()
