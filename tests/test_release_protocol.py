"""The release's protocol and data edge cases are the defaults: the real FLMS/FCDB annotation files
build, tiny person boxes are no person, CPC trains on the flattened batch, FCDB+FLMS pool."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import config_CPC
import config_GAICD
from cropping_dataset import FCDBDataset, FLMSDataset
from cropping_model import HumanCentricCroppingModel, crop_score_loss
from tests.conftest import require_shared
from untils.boxes import partition_masks, rescale_boxes, resized_size
from untils.evaluation import pooled_anchor_metrics
from untils.metrics import compute_iou_and_disp
from untils.score_losses import score_rank_loss, score_regression_loss


def test_defaults_are_the_release_protocol():
    gaicd, cpc = config_GAICD.Config(), config_CPC.Config()
    assert (gaicd.selection, gaicd.rank_loss_weighting) == ("test", "sin")
    assert (cpc.selection, cpc.rank_loss_weighting, cpc.view_per_image, cpc.score_loss_over, cpc.batch_size) == (
        "test",
        "sin",
        0,
        "batch",
        8,
    )


def test_cpc_loss_over_the_flattened_batch_hand_case():
    pred = torch.tensor([[1.0, 2.0, 0.0], [0.5, 3.0, 9.0]])
    gt = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, float("nan")]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    flat_pred, flat_gt = torch.tensor([1.0, 2.0, 0.0, 0.5, 3.0]), torch.tensor([2.0, 1.0, 0.0, 1.0, 2.0])
    expected = score_regression_loss(flat_pred, flat_gt) + score_rank_loss(flat_pred, flat_gt, "sin")
    got = crop_score_loss(pred, gt, ["L1Loss", "RankLoss"], valid, rank_loss_weighting="sin", over_batch=True)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # smooth-L1 by hand: |d| = 1, 1, 0, 0.5, 1 -> 0.5 + 0.5 + 0 + 0.125 + 0.5 over 5
    assert score_regression_loss(flat_pred, flat_gt).item() == pytest.approx(1.625 / 5)


def test_pooled_fcdb_flms_is_the_mean_over_all_their_images():
    fcdb = {"iou": 0.6, "disp": 0.1, "recall": 0.5, "images": 3}
    flms = {"iou": 0.9, "disp": 0.05, "recall": 1.0, "images": 1}
    pooled = pooled_anchor_metrics([fcdb, flms])
    assert pooled == pytest.approx(
        {"iou": (3 * 0.6 + 0.9) / 4, "disp": (3 * 0.1 + 0.05) / 4, "recall": (3 * 0.5 + 1.0) / 4, "images": 4}
    )


def _gaicd_size(name: str) -> tuple[int, int]:
    """A GAICD image's size from its grid crops: the outermost corners are bin centres 11.5/12 out."""
    crops = json.loads(require_shared("human_bboxes/GAICD/image_crop.json").read_text())[name]["bbox"]
    return (round(max(c[2] for c in crops) * 12 / 11.5), round(max(c[3] for c in crops) * 12 / 11.5))


def test_person_smaller_than_a_feature_cell_is_no_person_as_in_the_release():
    """430665.jpg (GAICD's human-centric test split): its box truncates to zero width on the 1/16
    grid, so the release's partition mask has no person cell and the model scores it person-less."""
    box = json.loads(require_shared("human_bboxes/GAICD/human_bboxes.json").read_text())["430665.jpg"]
    width, height = _gaicd_size("430665.jpg")
    resized_w, resized_h = resized_size(width, height, (256, 256), True)
    human = torch.from_numpy(rescale_boxes(np.array([box], np.float64), resized_w / width, resized_h / height))
    masks = partition_masks(human.reshape(1, 1, 4).float(), resized_w, resized_h)
    assert masks[0, 4].sum() == 0  # the release widened the box only after drawing the grid lines
    torch.manual_seed(0)
    model = HumanCentricCroppingModel(config_GAICD.Config(backbone="mobilenetv2", pretrained=False)).eval()
    image = torch.randn(1, 3, resized_h, resized_w)
    crops = torch.tensor([[[0.0, 0, resized_w, resized_h], [20, 10, 200, 180], [100, 40, resized_w - 8, 240]]])
    with torch.no_grad():
        with_box = model(image, crops, human.reshape(1, 1, 4).float())
        without = model(image, crops, None)
    torch.testing.assert_close(with_box.score, without.score, rtol=0, atol=0)


def _write_blank_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> None:
    """Images of the given sizes (tiny PNG data under the dataset's names: read by content, not suffix)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        Image.new("RGB", size, (90, 120, 150)).save(folder / name, format="PNG")


def test_the_full_official_flms_file_builds_and_scores_its_inverted_boxes(tmp_path):
    annotations = json.loads(require_shared("human_bboxes/FLMS/image_crop.json").read_text())
    sizes = {
        name: (max(max(b[0], b[2]) for b in boxes), max(max(b[1], b[3]) for b in boxes))
        for name, boxes in annotations.items()
    }
    root = tmp_path / "data"
    _write_blank_images(root / "FLMS" / "image", sizes)
    for name in ("image_crop.json", "human_bboxes.json"):
        shutil.copy(require_shared(f"human_bboxes/FLMS/{name}"), root / "FLMS" / name)
    cfg = config_CPC.Config(data_root=str(root), predefined_pkl=str(require_shared("pdefined_anchors.pkl")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = FLMSDataset(cfg, only_human_images=False)
    assert len(dataset) == 500
    said = " ".join(str(w.message) for w in caught)
    assert "465190454_Large.jpg" in said and "693687448_Large.jpg" in said
    gt = dataset.gt_crops[dataset.names.index("465190454_Large.jpg")]
    assert [779, 1006, 76, 68] in gt.tolist()
    # The release's IoU of an inverted box is 0 (no overlap); its displacement is still measured.
    iou, disp = compute_iou_and_disp(np.array([[779.0, 1006, 76, 68]]), np.array([0.0, 0, 768, 1024]), 768, 1024)
    assert iou == 0 and disp == pytest.approx((779 + abs(76 - 768)) / 768 + (1006 + abs(68 - 1024)) / 1024)


def test_fcdb_keeps_an_official_box_that_leaves_the_image(tmp_path):
    """The release scores FCDB's ground truth as annotated; an evaluation must not refuse it."""
    annotations = json.loads(require_shared("human_bboxes/FCDB/image_crop.json").read_text())
    people = json.loads(require_shared("human_bboxes/FCDB/human_bboxes.json").read_text())
    sizes = {
        name: (math.ceil(max(x + w, people[name][2])), math.ceil(max(y + h, people[name][3])))
        for name, (x, y, w, h) in annotations.items()
        if name in people
    }
    # an image whose crop reaches past its person: shrunk, the crop runs 10 px beyond the right edge
    shrunk = next(name for name in sorted(sizes) if annotations[name][0] + annotations[name][2] > people[name][2] + 10)
    sizes[shrunk] = (sizes[shrunk][0] - 10, sizes[shrunk][1])
    root = tmp_path / "data"
    _write_blank_images(root / "FCDB" / "data", sizes)
    for name in ("image_crop.json", "human_bboxes.json", "data_split.json"):
        shutil.copy(require_shared(f"human_bboxes/FCDB/{name}"), root / "FCDB" / name)
    cfg = config_CPC.Config(data_root=str(root), predefined_pkl=str(require_shared("pdefined_anchors.pkl")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = FCDBDataset(cfg, only_human_images=True)
    assert len(dataset) == len(people)
    assert any(shrunk in str(w.message) for w in caught)
    x, y, w, h = annotations[shrunk]
    assert dataset.gt_crops[dataset.names.index(shrunk)].tolist() == [[x, y, x + w, y + h]]


@pytest.mark.parametrize("name", ["320875.jpg", "274268.jpg", "306613.jpg"])
def test_training_persons_without_a_cell_in_a_flip_state(name):
    """These training images' person boxes lose their cell as they are, flipped, or both: then the
    model sees them person-less, as the release did."""
    box = json.loads(require_shared("human_bboxes/GAICD/human_bboxes.json").read_text())[name]
    width, height = _gaicd_size(name)
    resized_w, resized_h = resized_size(width, height, (256, 256), True)
    human = rescale_boxes(np.array([box], np.float64), resized_w / width, resized_h / height)
    flipped = human.copy()
    flipped[:, [0, 2]] = resized_w - human[:, [2, 0]]
    cells = [
        partition_masks(torch.from_numpy(b).reshape(1, 1, 4).float(), resized_w, resized_h)[0, 4].sum().item()
        for b in (human, flipped)
    ]
    assert 0 in cells
