"""cropping_dataset.py on tiny datasets built in tmp dirs in each release layout,
and human_bboxes/download.py's checksum verification (no network)."""

from __future__ import annotations

import json
import math
import pickle
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from config_CPC import Config as CPCConfig
from config_GAICD import Config
from cropping_dataset import (
    CPCDataset,
    DatasetError,
    FCDBDataset,
    FLMSDataset,
    GAICDataset,
    fcdb_image_names,
    flms_image_names,
    gaicd_image_names,
)
from human_bboxes.download import CHECKSUMS, verify
from human_bboxes.download import main as download_main
from tests.conftest import build_gaicd_sample, require_shared
from untils.batching import SizeBucketBatchSampler, collate_crops
from untils.boxes import crop_masks

SAMPLE_SPLIT = {"train": ["211958.jpg"], "test": ["265813.jpg", "297406.jpg"]}
PERSON_297406 = [142, 488, 252, 676]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def write_json(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def write_heat_map(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def left_bright_heat_map(width: int = 100, height: int = 80) -> np.ndarray:
    pixels = np.zeros((height, width), np.uint8)
    pixels[:, : width // 2] = 255
    return pixels


def build_gaicd(root: Path, flat: bool = False) -> Config:
    """The 3 real sample photos and their real annotation entries, in a GAICD folder."""
    build_gaicd_sample(root, flat)
    return Config(data_root=str(root))


@pytest.fixture
def gaicd_cfg(tmp_path) -> Config:
    return build_gaicd(tmp_path / "split_layout")


def painted_image(path: Path, size: tuple[int, int], rectangle: list[int]) -> None:
    """A grey image with a pure red rectangle [x1, y1, x2, y2]."""
    pixels = np.full((size[1], size[0], 3), 128, np.uint8)
    x1, y1, x2, y2 = rectangle
    pixels[y1:y2, x1:x2] = (255, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


CPC_IMAGES = {  # name: (size, red rectangle = first crop = person)
    "a.jpg": ((320, 240), [20, 40, 120, 200]),
    "b.jpg": ((200, 300), [10, 10, 90, 150]),
    "c.jpg": ((300, 200), [150, 20, 290, 180]),
}


@pytest.fixture
def cpc_cfg(tmp_path) -> CPCConfig:
    cfg = CPCConfig(data_root=str(tmp_path))
    annotations = {}
    for index, (name, (size, rectangle)) in enumerate(CPC_IMAGES.items()):
        painted_image(Path(cfg.CPC_image) / name, size, rectangle)
        write_heat_map(Path(cfg.CPC_heat_map) / name.replace(".jpg", ".png"), left_bright_heat_map())
        boxes = [rectangle, [0, 0, size[0], size[1]], [5, 5, size[0] // 2, size[1] // 2]][: 3 - index % 2]
        annotations[name] = {"bboxes": boxes, "scores": [4.0 - i for i in range(len(boxes))]}
    write_json(Path(cfg.CPC_anno), annotations)
    write_json(
        Path(cfg.CPC_human),
        {
            "a.jpg": {"bbox": CPC_IMAGES["a.jpg"][1], "weight": 320, "height": 240},
            "c.jpg": {"bbox": CPC_IMAGES["c.jpg"][1], "weight": 300, "height": 200},
        },
    )
    return cfg


def anchor_cfg(tmp_path) -> Config:
    return Config(data_root=str(tmp_path), predefined_pkl=str(require_shared("pdefined_anchors.pkl")))


# ---------------------------------------------------------------- GAICD


def test_gaicd_reproduces_release_fixture(gaicd_cfg):
    fixture = torch.load(require_shared("official_fixtures/hcic_forward_fixture.pt"), weights_only=True)
    dataset = GAICDataset(gaicd_cfg, split="test", augment=False)
    item = dataset[dataset.names.index(fixture["image_name"])]
    for key in ("crop_box", "human_box", "partition_mask"):
        assert torch.equal(item[key], fixture[key][0]), key
    # the release's crop masks are the boxes' own: datasets no longer draw them, the model factors them
    assert "crop_mask" not in item
    assert torch.equal(crop_masks(item["crop_box"], *item["image"].shape[:0:-1]), fixture["crop_mask"][0])
    # Same PIL LANCZOS resampling as the release's ANTIALIAS: measured max |diff| 0.0.
    assert (item["image"] - fixture["im"][0]).abs().max() < 1e-4
    assert (item["width"], item["height"]) == tuple(fixture["original_wh"])


def test_gaicd_item_contents(gaicd_cfg):
    dataset = GAICDataset(gaicd_cfg, split="test", augment=False)
    assert dataset.names == SAMPLE_SPLIT["test"]
    item = dataset[1]
    assert item["name"] == "297406.jpg" and item["has_human"] and not item["flipped"]
    assert item["image"].shape == (3, 256, 352) and item["image"].dtype == torch.float32
    n = len(item["score"])
    assert n == 90 and item["crop_box"].shape == (n, 4)
    assert item["partition_mask"].shape == (9, 16, 22)
    assert item["human_box"].tolist() == [[48.0, 167.0, 87.0, 233.0]]
    # No heat maps for the test split: zeros, flagged.
    assert not item["has_heat_map"] and item["heat_map"].shape == (1, 64, 64) and item["heat_map"].sum() == 0
    other = dataset[0]
    assert not other["has_human"] and other["human_box"].tolist() == [[-1.0] * 4]
    # no person: the release's mask, channel 8 over the whole map and an empty person cell
    assert other["partition_mask"][8].sum() == other["partition_mask"][8].numel() == other["partition_mask"].sum()
    # Boxes scaled with floor/ceil: checked against a plain loop over the annotation.
    annotation = json.loads(Path(gaicd_cfg.GAIC_anno).read_text())["265813.jpg"]
    ratio_w, ratio_h = other["image"].shape[2] / other["width"], other["image"].shape[1] / other["height"]
    for box, got in zip(annotation["bbox"], other["crop_box"].tolist(), strict=True):
        assert got == [
            math.floor(box[0] * ratio_w),
            math.floor(box[1] * ratio_h),
            math.ceil(box[2] * ratio_w),
            math.ceil(box[3] * ratio_h),
        ]
    assert other["score"].tolist() == pytest.approx(annotation["score"])


def test_gaicd_image_matches_a_manual_resize(gaicd_cfg):
    dataset = GAICDataset(gaicd_cfg, split="test", augment=False)
    item = dataset[0]
    original = Image.open(require_shared("GAICD-sample/images/test/265813.jpg")).convert("RGB")
    resized = np.asarray(original.resize((288, 256), Image.Resampling.LANCZOS), np.float64) / 255.0
    expected = ((resized - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    assert dataset.resized_size_of(0) == (288, 256)  # 1024x939: 256 * 1024 / 939 = 279.2 -> 9 * 32
    np.testing.assert_allclose(item["image"].numpy(), expected, atol=1e-5)


def test_gaicd_flat_layout_gives_the_same_items(gaicd_cfg, tmp_path):
    flat_cfg = build_gaicd(tmp_path / "flat_layout", flat=True)
    assert not (Path(flat_cfg.GAIC_image) / "test").exists()
    split_items = GAICDataset(gaicd_cfg, split="all", augment=False)
    flat_items = GAICDataset(flat_cfg, split="all", augment=False)
    assert split_items.names == flat_items.names == ["265813.jpg", "297406.jpg", "211958.jpg"]
    for index in range(3):
        for key in ("image", "crop_box", "partition_mask"):
            assert torch.equal(split_items[index][key], flat_items[index][key])


def test_gaicd_score_statistics_over_the_annotation_file(gaicd_cfg):
    dataset = GAICDataset(gaicd_cfg, split="test", augment=False)
    scores = [s for entry in json.loads(Path(gaicd_cfg.GAIC_anno).read_text()).values() for s in entry["score"]]
    assert dataset.score_mean == pytest.approx(statistics.fmean(scores))
    assert dataset.score_std == pytest.approx(statistics.pstdev(scores))


def test_gaicd_train_split_requires_heat_maps(gaicd_cfg):
    with pytest.raises(DatasetError, match=r"missing heat map .*211958\.png"):
        GAICDataset(gaicd_cfg, split="train")
    write_heat_map(Path(gaicd_cfg.GAIC_heat_map) / "211958.png", left_bright_heat_map())
    dataset = GAICDataset(gaicd_cfg, split="train")
    assert dataset.augment == gaicd_cfg.data_augmentation
    torch.manual_seed(0)
    item = dataset[0]
    assert item["has_heat_map"] and item["heat_map"].shape == (1, 64, 64)
    assert 0 <= item["heat_map"].min() and item["heat_map"].max() <= 1
    bright_half = item["heat_map"][0, :, 32:] if item["flipped"] else item["heat_map"][0, :, :32]
    assert bright_half.mean() > 0.95


def test_gaicd_human_subsets_of_the_real_split_files():
    shared = require_shared("human_bboxes")
    cfg = Config(
        data_root="unused",
        GAIC_split=str(shared / "GAICD" / "original_data_split.json"),
        GAIC_human_split=str(shared / "GAICD" / "human_data_split.json"),
        GAIC_human=str(shared / "GAICD" / "human_bboxes.json"),
        FCDB_human=str(shared / "FCDB" / "human_bboxes.json"),
        FCDB_split=str(shared / "FCDB" / "data_split.json"),
        FLMS_human=str(shared / "FLMS" / "human_bboxes.json"),
        FLMS_anno=str(shared / "FLMS" / "image_crop.json"),
    )
    assert len(gaicd_image_names(cfg, "train", only_human=True)) == 289
    assert len(gaicd_image_names(cfg, "test", only_human=True)) == 50
    assert len(gaicd_image_names(cfg, "all", only_human=True)) == 339
    assert len(gaicd_image_names(cfg, "train", only_human=False)) == 1036
    assert len(gaicd_image_names(cfg, "test", only_human=False)) == 200
    assert len(fcdb_image_names(cfg, only_human=True)) == 176
    assert len(fcdb_image_names(cfg, only_human=False)) == 319
    assert len(flms_image_names(cfg, only_human=True)) == 39
    assert len(flms_image_names(cfg, only_human=False)) == 500


def test_gaicd_human_only_test_split(gaicd_cfg):
    dataset = GAICDataset(gaicd_cfg, split="test", only_human_images=True)
    assert dataset.names == ["297406.jpg"] and dataset[0]["has_human"]


def test_every_problem_is_listed_in_one_error(gaicd_cfg):
    missing = [f"missing_{i:02d}.jpg" for i in range(25)]
    split = json.loads(Path(gaicd_cfg.GAIC_split).read_text())
    write_json(Path(gaicd_cfg.GAIC_split), {"train": split["train"], "test": split["test"] + missing})
    annotations = json.loads(Path(gaicd_cfg.GAIC_anno).read_text())
    annotations.pop("265813.jpg")
    write_json(Path(gaicd_cfg.GAIC_anno), annotations)
    with pytest.raises(DatasetError) as error:
        GAICDataset(gaicd_cfg, split="test")
    message = str(error.value)
    # 25 missing images, then 26 names missing from the annotation file (the 25 and 265813.jpg)
    assert "GAICD test split (27 images): 51 problem(s)" in message
    assert "missing image missing_00.jpg" in message and "... and 31 more" in message
    assert "missing image missing_24.jpg" not in message  # only the first 20 are spelled out


def test_names_missing_from_the_annotation_file(gaicd_cfg):
    annotations = json.loads(Path(gaicd_cfg.GAIC_anno).read_text())
    annotations.pop("265813.jpg")
    write_json(Path(gaicd_cfg.GAIC_anno), annotations)
    with pytest.raises(DatasetError, match=r"265813\.jpg: not in the crop annotation file"):
        GAICDataset(gaicd_cfg, split="test")


def test_missing_keys_in_the_annotation_file(gaicd_cfg):
    annotations = json.loads(Path(gaicd_cfg.GAIC_anno).read_text())
    annotations["297406.jpg"] = {"bboxes": annotations["297406.jpg"]["bbox"]}
    write_json(Path(gaicd_cfg.GAIC_anno), annotations)
    with pytest.raises(DatasetError, match=r"297406\.jpg: expected keys 'bbox' and 'score'"):
        GAICDataset(gaicd_cfg, split="test")


def test_crops_slightly_outside_are_clipped_and_nonsense_rejected(gaicd_cfg):
    annotations = json.loads(Path(gaicd_cfg.GAIC_anno).read_text())
    boxes = annotations["297406.jpg"]["bbox"]
    boxes[0] = [-5, 10, 1030, 744]  # 5 and 6 pixels outside a 1024-wide image: clipped
    write_json(Path(gaicd_cfg.GAIC_anno), annotations)
    with pytest.warns(UserWarning, match=r"1 image\(s\).*297406\.jpg"):
        dataset = GAICDataset(gaicd_cfg, split="test", augment=False)
    np.testing.assert_array_equal(dataset.crop_boxes[1][0], [0, 10, 1024, 744])
    boxes[0] = [0, 10, 1100, 744]
    write_json(Path(gaicd_cfg.GAIC_anno), annotations)
    with pytest.raises(DatasetError, match=r"297406\.jpg: crop box 0 .* more than 2% outside the 1024x744 image"):
        GAICDataset(gaicd_cfg, split="test")
    boxes[0] = [50, 10, 50, 744]
    write_json(Path(gaicd_cfg.GAIC_anno), annotations)
    with pytest.raises(DatasetError, match=r"297406\.jpg: crop box 0 .* x2 <= x1"):
        GAICDataset(gaicd_cfg, split="test")


def test_truncated_image_is_named_when_the_dataset_is_built(gaicd_cfg):
    path = Path(gaicd_cfg.GAIC_image) / "test" / "297406.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # the header survives, the pixels do not
    with pytest.raises(DatasetError, match=r"unreadable image .*297406\.jpg: image file is truncated"):
        GAICDataset(gaicd_cfg, split="test", augment=False)


def test_image_truncated_after_the_dataset_was_built_is_named_at_load_time(gaicd_cfg):
    dataset = GAICDataset(gaicd_cfg, split="test", augment=False)
    path = Path(gaicd_cfg.GAIC_image) / "test" / "297406.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(DatasetError, match=r"cannot decode image .*297406\.jpg"):
        dataset[1]


def test_unreadable_image_is_listed_at_construction(gaicd_cfg):
    (Path(gaicd_cfg.GAIC_image) / "test" / "265813.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"unreadable image .*265813\.jpg"):
        GAICDataset(gaicd_cfg, split="test")


# ---------------------------------------------------------------- CPC and augmentation


def test_cpc_items_fixed_size(cpc_cfg):
    dataset = CPCDataset(cpc_cfg, augment=False)
    assert dataset.names == list(CPC_IMAGES) and dataset.keep_aspect_ratio is False
    annotations = json.loads(Path(cpc_cfg.CPC_anno).read_text())
    for index, name in enumerate(dataset.names):
        item = dataset[index]
        width, height = CPC_IMAGES[name][0]
        assert item["image"].shape == (3, 256, 256) and (item["width"], item["height"]) == (width, height)
        for box, got in zip(annotations[name]["bboxes"], item["crop_box"].tolist(), strict=True):
            assert got == [
                math.floor(box[0] * 256 / width),
                math.floor(box[1] * 256 / height),
                math.ceil(box[2] * 256 / width),
                math.ceil(box[3] * 256 / height),
            ]
        assert item["has_human"] == (name != "b.jpg") and item["has_heat_map"]
    assert len(CPCDataset(cpc_cfg, only_human_images=True)) == 2


def colour_fraction(image: torch.Tensor, box: list[float]) -> float:
    """Share of clearly coloured pixels (chroma > 0.1) inside ``box``, after de-normalising.

    Colour jitter keeps the grey background grey, and at worst (saturation and contrast
    0.5, brightness 0.875) leaves the painted red a chroma of about 0.22.
    """
    pixels = image.numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    x1, y1, x2, y2 = (int(v) for v in box)
    region = pixels[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
    return float(((region.max(axis=-1) - region.min(axis=-1)) > 0.1).mean())


def test_augmentation_flips_image_boxes_heat_map_and_partition_together(cpc_cfg):
    dataset = CPCDataset(cpc_cfg, augment=True)
    plain = CPCDataset(cpc_cfg, augment=False)[0]
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        item = dataset[0]
        seen.add(item["flipped"])
        person = item["human_box"][0].tolist()
        assert item["crop_box"][0].tolist() == person  # first crop is the painted person
        assert colour_fraction(item["image"], person) > 0.9
        if item["flipped"]:
            assert colour_fraction(item["image"], plain["human_box"][0].tolist()) < 0.1
            assert person == [
                256 - plain["human_box"][0, 2].item(),
                plain["human_box"][0, 1].item(),
                256 - plain["human_box"][0, 0].item(),
                plain["human_box"][0, 3].item(),
            ]
            assert torch.equal(item["partition_mask"], plain_partition(person))
            assert item["heat_map"][0, :, 32:].mean() > 0.95 and item["heat_map"][0, :, :32].mean() < 0.05
        else:
            assert torch.equal(item["crop_box"], plain["crop_box"])
            assert item["heat_map"][0, :, :32].mean() > 0.95
    assert seen == {True, False}


def plain_partition(box: list[float]) -> torch.Tensor:
    """The partition masks of ``box`` in a 256x256 input, by hand: a 16x16 grid cut at box/16."""
    x1, y1, x2, y2 = (int(v / 16) for v in box)
    columns, rows = [0, x1, x2, 16], [0, y1, y2, 16]
    masks = torch.zeros(9, 16, 16)
    for i in range(3):
        for j in range(3):
            masks[i * 3 + j, rows[i] : rows[i + 1], columns[j] : columns[j + 1]] = 1
    return masks


def test_augmentation_is_reproducible_from_the_torch_seed(cpc_cfg):
    dataset = CPCDataset(cpc_cfg, augment=True)
    torch.manual_seed(3)
    first = dataset[2]
    torch.manual_seed(3)
    second = dataset[2]
    assert torch.equal(first["image"], second["image"]) and first["flipped"] == second["flipped"]


def test_cpc_missing_heat_maps_listed(cpc_cfg):
    for path in Path(cpc_cfg.CPC_heat_map).glob("*.png"):
        path.unlink()
    with pytest.raises(DatasetError, match=r"(?s)3 problem\(s\).*missing heat map .*c\.png"):
        CPCDataset(cpc_cfg)
    assert not CPCDataset(cpc_cfg, require_heat_maps=False)[0]["has_heat_map"]


# ---------------------------------------------------------------- FCDB and FLMS


def test_fcdb_ground_truth_and_anchors(tmp_path):
    cfg = anchor_cfg(tmp_path)
    painted_image(Path(cfg.FCDB_image) / "p.jpg", (400, 300), [100, 50, 200, 250])
    painted_image(Path(cfg.FCDB_image) / "q.jpg", (300, 400), [0, 0, 10, 10])
    write_json(Path(cfg.FCDB_anno), {"p.jpg": [10, 20, 300, 200], "q.jpg": [0, 0, 300, 400]})
    write_json(Path(cfg.FCDB_human), {"p.jpg": [100, 50, 200, 250]})
    write_json(Path(cfg.FCDB_split), {"train": [], "test": ["p.jpg", "q.jpg"], "human": ["p.jpg"]})
    human = FCDBDataset(cfg)
    assert human.names == ["p.jpg"]
    item = human[0]
    assert item["gt_crops"].tolist() == [[10.0, 20.0, 310.0, 220.0]]  # x, y, w, h -> x1, y1, x2, y2
    with open(require_shared("pdefined_anchors.pkl"), "rb") as handle:
        anchors = pickle.load(handle, encoding="iso-8859-1")
    assert item["crop_box"].shape == (1745, 4)
    np.testing.assert_allclose(item["crop_box"].numpy(), np.asarray(anchors, np.float64) * 256, rtol=1e-6)
    assert item["has_human"] and item["human_box"].tolist() == [[64.0, 42.0, 128.0, 214.0]]
    everything = FCDBDataset(cfg, only_human_images=False)
    assert everything.names == ["p.jpg", "q.jpg"] and "crop_mask" not in everything[1]


def test_flms_drops_crops_beyond_the_image_and_pads(tmp_path):
    cfg = anchor_cfg(tmp_path)
    painted_image(Path(cfg.FLMS_image) / "f.jpg", (500, 400), [0, 0, 1, 1])
    crops = [[0, 0, 500, 400], [10, 10, 300, 300], [0, 0, 501, 400], [5, 5, 200, 401]]
    write_json(Path(cfg.FLMS_anno), {"f.jpg": crops})
    write_json(Path(cfg.FLMS_human), {"f.jpg": [100, 100, 200, 300]})
    item = FLMSDataset(cfg)[0]
    assert item["gt_crops"].shape == (10, 4)
    assert item["gt_crops"][:2].tolist() == [[0, 0, 500, 400], [10, 10, 300, 300]]
    assert (item["gt_crops"][2:] == -1).all()


def test_flms_image_without_usable_crops_is_an_error(tmp_path):
    cfg = anchor_cfg(tmp_path)
    painted_image(Path(cfg.FLMS_image) / "f.jpg", (500, 400), [0, 0, 1, 1])
    write_json(Path(cfg.FLMS_anno), {"f.jpg": [[0, 0, 600, 400]]})
    write_json(Path(cfg.FLMS_human), {"f.jpg": [100, 100, 200, 300]})
    with pytest.raises(DatasetError, match=r"f\.jpg: 0 ground-truth crops inside the 500x400 image"):
        FLMSDataset(cfg)


# ---------------------------------------------------------------- collate and sampler


def test_collate_pads_crops_and_marks_them(gaicd_cfg):
    dataset = GAICDataset(gaicd_cfg, split="all", keep_aspect_ratio=False, augment=False)
    first, second = dataset[2], dataset[1]  # 211958.jpg has 87 crops, 297406.jpg 90
    batch = collate_crops([first, second])
    assert batch["crop_box"].shape == (2, 90, 4)
    assert batch["crop_valid"].sum(1).tolist() == [87, 90]
    assert (batch["crop_box"][0, 87:] == -1).all()
    assert torch.isnan(batch["score"][0, 87:]).all() and not torch.isnan(batch["score"][0, :87]).any()
    assert torch.equal(batch["crop_box"][0, :87], first["crop_box"])
    assert batch["has_human"].tolist() == [False, True] and batch["name"] == ["211958.jpg", "297406.jpg"]
    assert batch["width"].tolist() == [1024, 1024] and batch["image"].shape == (2, 3, 256, 256)


def test_collate_rejects_mixed_sizes(gaicd_cfg):
    dataset = GAICDataset(gaicd_cfg, split="test", augment=False)
    with pytest.raises(ValueError, match=r"265813\.jpg: 288x256, 297406\.jpg: 352x256"):
        collate_crops([dataset[0], dataset[1]])


class SizedIndex:
    """Stands in for a dataset: only sizes matter to the sampler."""

    def __init__(self, sizes: list[tuple[int, int]]):
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def resized_size_of(self, index: int) -> tuple[int, int]:
        return self.sizes[index]


SIZES = [(352, 256)] * 7 + [(256, 384)] * 5 + [(256, 256)] * 2


def test_bucket_sampler_batches_one_size_and_covers_all():
    sampler = SizeBucketBatchSampler(SizedIndex(SIZES), batch_size=3, shuffle=True, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2 + 1
    assert sorted(i for batch in batches for i in batch) == list(range(len(SIZES)))
    assert all(len({SIZES[i] for i in batch}) == 1 for batch in batches)
    assert list(sampler) == batches  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != batches
    dropped = SizeBucketBatchSampler(SizedIndex(SIZES), batch_size=3, drop_last=True)
    assert [len(batch) for batch in dropped] == [3, 3, 3] and len(dropped) == 3


def test_bucket_sampler_without_shuffle_keeps_dataset_order():
    sampler = SizeBucketBatchSampler(SizedIndex(SIZES), batch_size=4, shuffle=False)
    assert [i for batch in sampler for i in batch] == [12, 13, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5, 6]


def test_bucket_sampler_distributed_ranks_split_the_batches():
    ranks = [SizeBucketBatchSampler(SizedIndex(SIZES), batch_size=2, seed=5, num_replicas=3, rank=r) for r in range(3)]
    per_rank = [list(sampler) for sampler in ranks]
    assert [len(batches) for batches in per_rank] == [len(sampler) for sampler in ranks] == [3, 3, 3]
    covered = sorted(i for batches in per_rank for batch in batches for i in batch)
    assert set(covered) == set(range(len(SIZES)))  # 8 batches wrapped to 9: one repeats
    with pytest.raises(ValueError, match="rank"):
        SizeBucketBatchSampler(SizedIndex(SIZES), batch_size=2, num_replicas=2, rank=2)


def test_dataloader_with_sampler_and_collate(gaicd_cfg):
    dataset = GAICDataset(gaicd_cfg, split="all", augment=False)
    loader = DataLoader(
        dataset, batch_sampler=SizeBucketBatchSampler(dataset, batch_size=2, shuffle=False), collate_fn=collate_crops
    )
    shapes = sorted(tuple(batch["image"].shape) for batch in loader)
    assert shapes == [(1, 3, 256, 288), (1, 3, 256, 352), (1, 3, 256, 384)]


# ---------------------------------------------------------------- human_bboxes/download.py


def test_release_files_match_their_checksums():
    assert verify(str(require_shared("human_bboxes"))) == []


def test_modified_copy_fails_naming_the_file(tmp_path, capsys):
    copy = tmp_path / "human_bboxes"
    for relative in CHECKSUMS:
        (copy / relative).parent.mkdir(parents=True, exist_ok=True)
        (copy / relative).write_bytes((require_shared("human_bboxes") / relative).read_bytes())
    target = copy / "FLMS" / "human_bboxes.json"
    target.write_text(target.read_text().replace("453", "454", 1))
    (copy / "CPC" / "human_bboxes.json").unlink()
    problems = verify(str(copy))
    assert len(problems) == 2
    assert any("checksum mismatch" in p and str(target) in p for p in problems)
    assert any(p.startswith("missing") and p.endswith("CPC/human_bboxes.json") for p in problems)
    assert download_main(["--verify-only", str(copy)]) == 1
    assert "FLMS/human_bboxes.json" in capsys.readouterr().err
    assert len(CHECKSUMS) == 10


def test_a_16_bit_photo_gives_the_input_of_its_8_bit_version(tmp_path):
    """16-bit files are scaled to 8 bits (x / 257), not clipped to white."""
    inputs = []
    for bits in (8, 16):
        root = build_gaicd_sample(tmp_path / f"bits{bits}")
        path = root / "GAICD" / "images" / "test" / "297406.jpg"
        grey = np.asarray(Image.open(path).convert("L"))
        image = Image.fromarray(grey) if bits == 8 else Image.fromarray(grey.astype(np.uint16) * 257).convert("I;16")
        image.save(path, format="PNG")  # read by content: the name keeps its .jpg
        dataset = GAICDataset(Config(data_root=str(root)), split="test", augment=False)
        inputs.append(dataset[dataset.names.index("297406.jpg")]["image"])
    torch.testing.assert_close(inputs[1], inputs[0], rtol=0, atol=0)
