"""Inference speed-ups give the scores of the plain computation: box-mask content features, batching,
channels-last, bf16 autocast (close), torch.compile."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import spearmanr

import config_CPC
import cropping_model as cm
from config_GAICD import Config
from cropping_dataset import evaluation_dataset
from tests.conftest import require_shared
from untils import content_preserve
from untils.batching import collate_crops, evaluation_loader
from untils.boxes import crop_mask_factors, crop_masks, partition_masks
from untils.candidates import gaic_grid_candidates
from untils.evaluation import evaluate_anchors, evaluate_scored
from untils.inference import run_model


@pytest.fixture(autouse=True)
def one_thread():
    """Small float64 work gains nothing from threads, and on a shared machine a descheduled OpenMP
    thread stalls every parallel region (ten times slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def original_content_features(
    layer: torch.nn.Sequential, heat_map: torch.Tensor, masks: torch.Tensor, image_index: torch.Tensor
) -> torch.Tensor:
    """The release's formulation: every crop's [heat map, mask] pair through all five layers."""
    pairs = torch.stack([heat_map[image_index, 0], masks], dim=1)
    x = F.max_pool2d(F.conv2d(pairs, layer[0].weight, layer[0].bias), 2)
    x = F.max_pool2d(F.conv2d(x, layer[2].weight, layer[2].bias), 2)
    return F.linear(x.flatten(1), layer[5].weight, layer[5].bias)


def awkward_boxes(width: int, height: int, count: int, seed: int) -> torch.Tensor:
    """Random boxes plus the edge cases of rasterisation: whole image, image borders, thinner than
    the 5x5 kernel on the 64x64 grid, empty after truncation, padding."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([width, height])
    random = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1).floor()
    special = torch.tensor(
        [
            [0, 0, width, height],
            [0, 10, 30, height],
            [width - 20, 0, width, 40],
            [10, 5, 13, height - 5],
            [40, 30, 41, 31],
            [-1, -1, -1, -1],
        ],
        dtype=torch.float32,
    )
    return torch.cat([random, special])


def small_model(backbone: str = "mobilenetv2", **overrides) -> cm.HumanCentricCroppingModel:
    torch.manual_seed(0)
    return cm.HumanCentricCroppingModel(
        Config(pretrained=False, backbone=backbone, **overrides), loadweights=False
    ).eval()


# ----- the content feature from box masks is the original computation -----------------------


def test_box_masks_factor_the_rasterised_masks():
    width, height = 120, 90
    boxes = awkward_boxes(width, height, 30, seed=1)
    rows, columns = crop_mask_factors(boxes, width, height)
    rebuilt = rows.unsqueeze(-1) * columns.unsqueeze(-2)
    torch.testing.assert_close(rebuilt, crop_masks(boxes, width, height), rtol=0, atol=0)
    assert rebuilt[-1].sum() == 0 and rebuilt[-2].sum() == 0  # padding, and a box empty on the grid


@pytest.mark.parametrize("chunk", [content_preserve.CPU_CROP_CHUNK, 5])
@pytest.mark.parametrize("masks_as", ["boxes", "general"])
def test_content_features_equal_the_original_formulation_in_float64(masks_as, chunk, monkeypatch):
    """Crops of two images, interleaved, in one chunk and in several (the last one shorter)."""
    monkeypatch.setattr(content_preserve, "CPU_CROP_CHUNK", chunk)
    torch.manual_seed(0)
    module = content_preserve.ContentPreserveModule(32, 8, 256).double()
    width, height = 160, 96
    boxes = awkward_boxes(width, height, 35, seed=2)
    assert len(boxes) > chunk and len(boxes) % chunk
    heat_map = torch.rand(2, 1, 64, 64, dtype=torch.float64)
    image_index = torch.randint(0, 2, (len(boxes),), generator=torch.Generator().manual_seed(3))
    if masks_as == "boxes":  # the fast path
        reference_masks = crop_masks(boxes, width, height)
        ours = module.crop_features(heat_map, *crop_mask_factors(boxes, width, height), image_index)
    else:  # the plain formulation, for any mask, e.g. not a box
        reference_masks = (torch.rand(len(boxes), 64, 64, dtype=torch.float64) < 0.4).double()
        ours = module.crop_features_reference(heat_map, reference_masks, image_index)
    expected = original_content_features(module.content_feat_layer, heat_map, reference_masks.double(), image_index)
    assert ours.shape == (len(boxes), 256)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_box_content_features_for_edges_at_every_kind_of_offset_in_float64():
    """Box edges on even and odd cells of the 64x64 grid, at and next to its sides, boxes thinner
    than the 5x5 kernel and as tall as the grid: the factored box path is the original's."""
    torch.manual_seed(0)
    module = content_preserve.ContentPreserveModule(32, 8, 256).double()
    edges = [0, 1, 2, 3, 4, 5, 6, 9, 30, 31, 33, 56, 58, 59, 60, 61, 62, 63, 64]
    spans = [(low, high) for low in edges for high in edges if high > low]
    boxes = torch.tensor(
        [(x0, y0, x1, y1) for (y0, y1), (x0, x1) in zip(spans, reversed(spans), strict=True)], dtype=torch.float32
    )
    masks = crop_masks(boxes, 64, 64)
    assert {int(m.amax(-1).sum()) for m in masks} >= {1, 2, 3, 4, 5, 64}  # thin rows and whole height
    heat_map = torch.rand(1, 1, 64, 64, dtype=torch.float64)
    image_index = torch.zeros(len(boxes), dtype=torch.long)
    ours = module.crop_features(heat_map, *crop_mask_factors(boxes, 64, 64), image_index)
    expected = original_content_features(module.content_feat_layer, heat_map, masks.double(), image_index)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_content_feature_gradients_equal_the_original_formulation_in_float64():
    """Training takes the box path: its gradients must be the original's too."""
    torch.manual_seed(0)
    module = content_preserve.ContentPreserveModule(32, 8, 256).double()
    width, height = 128, 128
    boxes = awkward_boxes(width, height, 6, seed=4)
    image_index = torch.tensor([0, 1] * (len(boxes) // 2))
    heat_map = torch.rand(2, 1, 64, 64, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(len(boxes), 256, dtype=torch.float64)
    gradients = []
    for compute in (
        lambda: module.crop_features(heat_map, *crop_mask_factors(boxes, width, height), image_index),
        lambda: original_content_features(
            module.content_feat_layer, heat_map, crop_masks(boxes, width, height).double(), image_index
        ),
    ):
        module.zero_grad()
        heat_map.grad = None
        (compute() * weights).sum().backward()
        gradients.append([heat_map.grad.clone()] + [p.grad.clone() for p in module.content_feat_layer.parameters()])
    for ours, expected in zip(*gradients, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_content_features_of_no_crops():
    module = content_preserve.ContentPreserveModule(32, 8, 256)
    rows, columns = crop_mask_factors(torch.zeros(0, 4), 64, 64)
    features = module.crop_features(torch.rand(1, 1, 64, 64), rows, columns, torch.zeros(0, dtype=torch.long))
    assert features.shape == (0, 256)


def test_model_without_masks_scores_as_with_the_rasterised_masks_in_float64(monkeypatch):
    model = small_model().double()
    width, height = 128, 96
    boxes = torch.stack([awkward_boxes(width, height, 6, seed=5), awkward_boxes(width, height, 6, seed=6)]).double()
    valid = boxes[..., 0] >= 0
    human = torch.tensor([[[20.0, 10.0, 60.0, 90.0]], [[-1.0, -1.0, -1.0, -1.0]]], dtype=torch.float64)
    image = torch.randn(2, 3, height, width, dtype=torch.float64)
    partition = partition_masks(human, width, height).double()
    module = model.content_preserve
    with torch.no_grad():
        ours, heat, _ = model(image, boxes, human, crop_valid=valid, partition_mask=partition)
        # the plain formulation on the rasterised masks of the same boxes
        monkeypatch.setattr(
            module,
            "crop_features",
            lambda heat_map, rows, columns, index: module.crop_features_reference(
                heat_map, crop_masks(boxes.reshape(-1, 4), width, height).double(), index
            ),
        )
        expected, expected_heat, _ = model(image, boxes, human, crop_valid=valid, partition_mask=partition)
    torch.testing.assert_close(heat, expected_heat, rtol=0, atol=0)
    assert torch.isneginf(ours[~valid]).all()
    torch.testing.assert_close(ours[valid], expected[valid], rtol=1e-10, atol=1e-12)


# ----- batching several images gives each image's own scores --------------------------------


class Float64(torch.nn.Module):
    """Runs a float64 copy of a crop model on float32 batches (``module``, as DistributedDataParallel)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.module = model.double()

    def forward(self, *args, **kwargs):
        def widen(value):
            return value.double() if torch.is_tensor(value) and value.is_floating_point() else value

        return self.module(*[widen(a) for a in args], **{k: widen(v) for k, v in kwargs.items()})


class ScoredImages(torch.utils.data.Dataset):
    """Generated images of a few sizes with different numbers of GAIC crops, random scores."""

    def __init__(self, sizes: list[tuple[int, int]], crop_counts: list[int], seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for index, ((width, height), count) in enumerate(zip(sizes, crop_counts, strict=True)):
            human = torch.tensor([[10.0, 5.0, 50.0, height - 5.0]]) if index % 2 else torch.full((1, 4), -1.0)
            self.items.append(
                {
                    "image": torch.randn(3, height, width, generator=generator),
                    "crop_box": gaic_grid_candidates(width, height)[:count],
                    "human_box": human,
                    "partition_mask": partition_masks(human, width, height),
                    "score": 1 + 4 * torch.rand(count, generator=generator),
                    "name": f"image{index}.jpg",
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]

    def resized_size_of(self, index: int) -> tuple[int, int]:
        return tuple(self.items[index]["image"].shape[:0:-1])


MIXED = ScoredImages(
    sizes=[(128, 96), (96, 128), (128, 96), (128, 96), (96, 128), (128, 96)], crop_counts=[14, 10, 11, 14, 12, 10]
)


def test_batched_scores_equal_single_image_scores():
    model = Float64(small_model())
    loader = evaluation_loader(MIXED, images_per_batch=4)
    seen = []
    with torch.no_grad():
        for batch in loader:
            assert (
                len({tuple(MIXED.resized_size_of(i)) for i in range(len(MIXED)) if MIXED[i]["name"] in batch["name"]})
                == 1
            )
            scores = run_model(model, batch).score
            for row, name in enumerate(batch["name"]):
                index = int(name[len("image") : -len(".jpg")])
                alone = collate_crops([MIXED[index]])
                expected = run_model(model, alone).score
                count = len(MIXED[index]["crop_box"])
                torch.testing.assert_close(scores[row, :count], expected[0], rtol=1e-10, atol=1e-12)
                assert torch.isneginf(scores[row, count:]).all()
                seen.append(index)
    assert sorted(seen) == list(range(len(MIXED)))
    assert len(loader) < len(MIXED)  # some batch really held several images


def test_evaluate_scored_in_batches_equals_one_image_at_a_time():
    model = Float64(small_model())
    alone = evaluate_scored(model, MIXED, images_per_batch=1, progress=False)
    batched = evaluate_scored(model, MIXED, images_per_batch=4, progress=False)
    assert alone == pytest.approx(batched, rel=1e-12, abs=1e-12)
    assert alone["images"] == len(MIXED)


@pytest.fixture(scope="module")
def flms_root(tmp_path_factory):
    """Four generated photos of two shapes in FLMS's layout, with 1 to 3 ground-truth crops each."""
    root = tmp_path_factory.mktemp("flms")
    folder = root / "FLMS" / "image"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    crops, people = {}, {}
    for index, (width, height) in enumerate([(200, 150), (150, 200), (200, 150), (200, 150)]):
        name = f"photo{index}.jpg"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / name)
        crops[name] = [[10 * k, 5 * k, width - 10 * k, height - 5 * k] for k in range(1 + index % 3)]
        people[name] = [20, 20, 80, height - 10]
    (root / "FLMS" / "image_crop.json").write_text(json.dumps(crops))
    (root / "FLMS" / "human_bboxes.json").write_text(json.dumps(people))
    shutil.copy(require_shared("pdefined_anchors.pkl"), root / "pdefined_anchors.pkl")
    return root


def test_evaluate_on_flms_in_batches_equals_one_image_at_a_time(flms_root):
    """1,745 anchors per image: a light GAIC model keeps float64 affordable (the batching is the point)."""
    cfg = config_CPC.Config(
        data_root=str(flms_root),
        image_size=(64, 64),
        keep_aspect_ratio=True,
        backbone="mobilenetv2",
        pretrained=False,
        reduced_dim=4,
    )
    torch.manual_seed(0)
    model = Float64(cm.GAICModel(cfg, loadweights=False))
    dataset = evaluation_dataset(cfg, "FLMS", only_human=True)
    alone = evaluate_anchors(model, dataset, progress=False)
    batched = evaluate_anchors(model, dataset, images_per_batch=3, progress=False)
    assert alone == pytest.approx(batched, rel=1e-12, abs=1e-12)
    assert alone["images"] == 4


# ----- memory format, reduced precision, compilation -----------------------------------------


def _one_image_batch(width: int = 128, height: int = 96, crops: int = 20) -> dict:
    batch = collate_crops([ScoredImages([(width, height)], [crops], seed=7)[0]])
    batch["human_box"] = torch.tensor([[[30.0, 10.0, 80.0, 90.0]]])
    batch.pop("partition_mask")
    return batch


@pytest.mark.parametrize("model_type", ["HCIC", "GAIC"])
def test_channels_last_gives_the_same_scores(model_type):
    torch.manual_seed(0)
    model = cm.build_crop_model(Config(pretrained=False, backbone="mobilenetv2"), model_type, loadweights=False)
    model.eval()
    batch = _one_image_batch()
    with torch.no_grad():
        expected = run_model(model, batch).score
        model.to(memory_format=torch.channels_last)
        ours = run_model(model, batch, channels_last=True).score
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


def test_cpu_bfloat16_autocast_is_close():
    model = small_model()
    batch = _one_image_batch(crops=60)
    with torch.no_grad():
        expected, heat, _ = run_model(model, batch)
        ours, heat_bf16, _ = run_model(model, batch, autocast_dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    spread = expected.std().item()
    assert (ours.float() - expected).abs().max().item() < 0.1 * spread
    assert spearmanr(ours.float()[0].numpy(), expected[0].numpy()).statistic > 0.95
    assert (heat_bf16.float() - heat).abs().max().item() < 0.02


def test_torch_compile_gives_the_eager_scores_in_one_graph():
    """One graph (fullgraph): the forward has no data-dependent shapes, so no host-device sync on
    CUDA. The batch mixes an image without a person and a padded crop list."""
    model = small_model()
    images = ScoredImages(sizes=[(128, 96), (128, 96)], crop_counts=[12, 9], seed=8)
    batch = collate_crops([images[0], images[1]])
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        expected = run_model(model, batch)
        ours = run_model(compiled, batch)
    assert torch.isneginf(ours.score[1, 9:]).all()
    for name, mine, theirs in zip(ours._fields, ours, expected, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=name)
