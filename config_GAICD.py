"""Options for training and evaluating on GAICD, with the paper's defaults.

Importing this module has no side effects. Every field can be overridden from the
command line of any script (``--max_epoch 2 --backbone mobilenetv2``); the data root
also comes from ``--data-root`` or the ``HCIC_DATA_ROOT`` environment variable.
Paths left as ``None`` are derived from ``data_root`` in the release's layout (so they are typed
``str``: ``__post_init__`` fills them in).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from untils.config import check_choice
from untils.runtime import default_workers

BACKBONES = ("vgg16", "resnet50", "mobilenetv2", "shufflenetv2")
LOSS_TYPES = ("L1Loss", "RankLoss", "WeightedL1Loss", "LVRLoss")
PRECISIONS = ("fp32", "bf16", "fp16")
DATA_ROOT_ENV = "HCIC_DATA_ROOT"
MODEL_TYPES = ("HCIC", "GAIC", "GAIC-official")
MOS_MEAN, MOS_STD = 2.95, 0.8  # GAICD's mean opinion scores, as GAIC's release normalises them


def _default_data_root() -> str:
    return os.environ.get(DATA_ROOT_ENV, "./dataset")


def _size_pair(values: Any) -> tuple[int, int]:
    sizes = tuple(int(v) for v in values)
    if len(sizes) != 2:
        raise ValueError(f"config option image_size={sizes} must be two sizes >= 32")
    return sizes[0], sizes[1]


def _opt(help_text: str, default=None, **kwargs):
    return field(default=default, metadata={"help": help_text}, **kwargs)


def _derived(help_text: str) -> Any:
    """A field typed as what ``__post_init__`` makes of it: None (the default, also ``none`` on the
    command line or in a saved config) is replaced there (a path under data_root, the free CPUs)."""
    return field(default=None, metadata={"help": help_text, "derived": True})


@dataclass
class Config:
    TRAINING_SET: ClassVar[str] = "GAICD"  # the dataset the experiment names start with

    # data
    data_root: str = field(
        default_factory=_default_data_root,
        metadata={"help": f"folder holding GAICD/, CPCDataset/, FCDB/, FLMS/ (env {DATA_ROOT_ENV})"},
    )
    predefined_pkl: str = _derived("the 1,745 predefined anchors used on FCDB/FLMS")
    CPC_path: str = _derived("CPC folder")
    CPC_image: str = _derived("CPC images")
    CPC_anno: str = _derived("CPC image_crop.json")
    CPC_human: str = _derived("CPC human_bboxes.json")
    FCDB_path: str = _derived("FCDB folder")
    FCDB_image: str = _derived("FCDB images")
    FCDB_anno: str = _derived("FCDB image_crop.json")
    FCDB_human: str = _derived("FCDB human_bboxes.json")
    FCDB_split: str = _derived("FCDB data_split.json")
    FLMS_path: str = _derived("FLMS folder")
    FLMS_image: str = _derived("FLMS images")
    FLMS_anno: str = _derived("FLMS image_crop.json")
    FLMS_human: str = _derived("FLMS human_bboxes.json")
    GAIC_path: str = _derived("GAICD folder")
    GAIC_image: str = _derived("GAICD images (flat, or with train/ and test/ inside)")
    GAIC_anno: str = _derived("GAICD image_crop.json")
    GAIC_human: str = _derived("GAICD human_bboxes.json")
    GAIC_split: str = _derived("GAICD original_data_split.json")
    GAIC_human_split: str = _derived("GAICD human_data_split.json")
    heat_map_dir: str = _derived("pseudo heat maps, as written by generate_pseudo_heatmap.py")
    CPC_heat_map: str = _derived("CPC pseudo heat maps")
    GAIC_heat_map: str = _derived("GAICD pseudo heat maps")
    skip_missing: bool = _opt(
        "with a partial dataset, use the images that are there (how many were skipped is "
        "printed) instead of stopping with the list of missing ones; test.py --table also "
        "skips datasets that are not installed",
        False,
    )

    image_size: tuple[int, int] = _opt("shorter side when keeping the aspect ratio, else (width, height)", (256, 256))
    backbone: str = _opt(f"one of {', '.join(BACKBONES)}", "vgg16")
    backbone_weight_path: str | None = _opt(
        "local ImageNet weights for the backbone; None uses torchvision's weights API"
    )
    pretrained: bool = _opt("start the backbone from ImageNet weights (false: random init)", True)

    model_type: str = _opt(
        "HCIC (human-centric), GAIC (the baseline, our backbones) or GAIC-official (GAIC's "
        "released architecture and parameter names)",
        "HCIC",
    )
    image_preprocessing: str = _opt(
        "hcic: PIL Lanczos resize, pixels / 255 (the HCIC release); gaic: cv2 bilinear "
        "resize, pixels / 256 (GAIC's release, what its published models expect)",
        "hcic",
    )

    # training
    loss_type: list[str] = _opt(f"any of {', '.join(LOSS_TYPES)} (default: L1Loss RankLoss)")
    score_loss_over: str = _opt(
        "image: score losses per image, averaged over the batch's images; batch: once over "
        "all the batch's crops together (the HCIC release's CPC training)",
        "image",
    )
    normalize_scores: bool = _opt(
        f"train on (score - {MOS_MEAN}) / {MOS_STD}, as GAIC's release (ranking metrics do not change)", False
    )
    rank_loss_weighting: str = _opt(
        "RankLoss pair weight: sin of the score difference (the HCIC release, used for "
        "the paper's numbers) or its sign (the gradient of a hinge on the pair order)",
        "sin",
    )
    device: str = _opt("cpu, cuda, cuda:N or auto", "auto")
    gpu_id: int = _opt("GPU index used when device is auto or cuda", 0)
    num_workers: int = _derived("DataLoader workers (default: one fewer than the CPUs free now, at most 4)")
    seed: int = _opt("random seed", 0)
    deterministic: bool = _opt("bitwise-reproducible kernels (torch.use_deterministic_algorithms); slower", False)
    precision: str = _opt(
        "forward pass in fp32, or under autocast in bf16 or fp16 (fp16 trains with a loss "
        "scaler); bf16 is fast on Ampere or newer GPUs and on CPUs with AVX512-BF16 or AMX",
        "fp32",
    )
    channels_last: bool = _opt(
        "run the model channels-last (faster convolutions on GPUs, and on CPUs with "
        "oneDNN); scores are the same up to rounding",
        False,
    )
    only_human: bool = _opt("train on the human-centric images only", False)
    data_augmentation: bool = _opt("flip and colour jitter while training", True)
    train_in_eval_mode: bool = _opt(
        "train with the whole model in eval mode: BatchNorm statistics stay as loaded "
        "and dropout is off (GAIC's release calls net.eval() once before training, "
        "since its batches hold one image; set by --preset GAIC-official)",
        False,
    )
    keep_aspect_ratio: bool = _opt("resize the shorter side to image_size[0] (else a fixed size)", True)

    use_partition_aware: bool = _opt("partition-aware feature", True)
    partition_aware_type: int = _opt("0 (no partition), 1 (human only), 2 (human/background), 9", 9)
    concat_with_human: bool = _opt("concatenate the person's RoI feature before partitioning", True)
    visualize_partition_feature: bool = _opt("log partition maps", False)

    use_content_preserve: bool = _opt("content-preserving feature", True)
    only_content_preserve: bool = _opt("score crops from the content feature alone", False)
    content_preserve_type: str = _opt("gcn or conv", "gcn")
    content_loss_weight: float = _opt("weight of the heat map L1 loss", 1.0)
    visualize_heat_map: bool = _opt("log heat maps", False)

    use_rod_feature: bool = _opt("RoD (discarded content) feature", True)
    reduced_dim: int = _opt("channels of the reduced feature map", 32)

    batch_size: int = _opt("images per optimiser step", 1)
    lr_scheduler: str = _opt("cosine (after warm-up), step, or constant (GAIC's release)", "cosine")
    warmup_epochs: int = _opt("linear warm-up epochs before the cosine schedule", 5)
    max_epoch: int = _opt("epochs", 80)
    lr_decay_epoch: list[int] | None = _opt("epochs where the step schedule decays (default: never)")
    eval_freq: int = _opt("evaluate every N epochs", 1)

    images_per_step: int = _opt(
        "images per forward pass (same resized size), in training and evaluation; gradients accumulate to batch_size", 1
    )
    selection: str = _opt(
        "choose best checkpoints on 'test' (the release's protocol, used for the paper's "
        "numbers) or on 'val' (carved from train, the test split reported once: use it for new "
        "research)",
        "test",
    )
    val_fraction: float = _opt("share of the training images held out for validation when selection=val", 0.1)
    checkpoint_steps: int = _opt(
        "also save last.pth inside an epoch, at the first optimiser step N or more steps "
        "after the last save (0: at epoch ends only)",
        0,
    )
    view_per_image: int = _opt("candidate crops sampled per image per step (0: every crop)", 64)
    lr: float = _opt("learning rate", 1e-4)
    lr_decay: float = _opt("step schedule decay factor", 0.1)
    weight_decay: float = _opt("Adam weight decay", 1e-4)

    save_freq: int | None = _opt("also keep epoch_N.pth every N epochs (default: never)")
    display_freq: int = _opt("log losses every N steps", 50)
    visualize_freq: int = _opt("log image panels every N steps", 50)

    exp_root: str = _opt("folder for experiments", "./experiments")
    exp_name: str | None = _opt("experiment name (default: derived from the options)")

    def __post_init__(self) -> None:
        if self.loss_type is None:
            self.loss_type = ["L1Loss", "RankLoss"]
        self.image_size = _size_pair(self.image_size)
        if self.num_workers is None:
            self.num_workers = default_workers()
        root = self.data_root
        self._derive("predefined_pkl", root, "pdefined_anchors.pkl")
        self._derive("CPC_path", root, "CPCDataset")
        self._derive("CPC_image", self.CPC_path, "images")
        self._derive("CPC_anno", self.CPC_path, "image_crop.json")
        self._derive("CPC_human", self.CPC_path, "human_bboxes.json")
        self._derive("FCDB_path", root, "FCDB")
        self._derive("FCDB_image", self.FCDB_path, "data")
        self._derive("FCDB_anno", self.FCDB_path, "image_crop.json")
        self._derive("FCDB_human", self.FCDB_path, "human_bboxes.json")
        self._derive("FCDB_split", self.FCDB_path, "data_split.json")
        self._derive("FLMS_path", root, "FLMS")
        self._derive("FLMS_image", self.FLMS_path, "image")
        self._derive("FLMS_anno", self.FLMS_path, "image_crop.json")
        self._derive("FLMS_human", self.FLMS_path, "human_bboxes.json")
        self._derive("GAIC_path", root, "GAICD")
        self._derive("GAIC_image", self.GAIC_path, "images")
        self._derive("GAIC_anno", self.GAIC_path, "image_crop.json")
        self._derive("GAIC_human", self.GAIC_path, "human_bboxes.json")
        self._derive("GAIC_split", self.GAIC_path, "original_data_split.json")
        self._derive("GAIC_human_split", self.GAIC_path, "human_data_split.json")
        self._derive("heat_map_dir", root, "heat_map_gt")
        self._derive("CPC_heat_map", self.heat_map_dir, os.path.join("CPC", "mask"))
        self._derive("GAIC_heat_map", self.heat_map_dir, os.path.join("GAICD", "mask"))
        self.validate()

    def _derive(self, name: str, folder: str, leaf: str) -> None:
        if getattr(self, name) is None:
            setattr(self, name, os.path.join(folder, leaf))

    def validate(self) -> None:
        check_choice("backbone", self.backbone, BACKBONES)
        check_choice("model_type", self.model_type, MODEL_TYPES)
        check_choice("image_preprocessing", self.image_preprocessing, ("hcic", "gaic"))
        if self.model_type == "GAIC-official" and self.backbone not in ("mobilenetv2", "shufflenetv2", "vgg16"):
            raise ValueError(
                f"config option backbone={self.backbone!r}: GAIC-official has mobilenetv2, shufflenetv2 or vgg16"
            )
        check_choice("rank_loss_weighting", self.rank_loss_weighting, ("sign", "sin"))
        check_choice("selection", self.selection, ("val", "test"))
        check_choice("score_loss_over", self.score_loss_over, ("image", "batch"))
        check_choice("partition_aware_type", self.partition_aware_type, (0, 1, 2, 9))
        check_choice("content_preserve_type", self.content_preserve_type, ("gcn", "conv"))
        check_choice("lr_scheduler", self.lr_scheduler, ("cosine", "step", "constant"))
        check_choice("precision", self.precision, PRECISIONS)
        for loss in self.loss_type:
            check_choice("loss_type", loss, LOSS_TYPES)
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            raise ValueError(f"config option image_size={self.image_size} must be two sizes >= 32")
        for name in (
            "reduced_dim",
            "batch_size",
            "max_epoch",
            "eval_freq",
            "images_per_step",
            "display_freq",
            "visualize_freq",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"config option {name}={getattr(self, name)} must be >= 1")
        for name in ("warmup_epochs", "checkpoint_steps", "num_workers", "gpu_id", "view_per_image"):
            if getattr(self, name) < 0:
                raise ValueError(f"config option {name}={getattr(self, name)} must be >= 0")
        if self.save_freq is not None and self.save_freq < 1:
            raise ValueError(f"config option save_freq={self.save_freq} must be >= 1 (or not given)")
        if any(epoch < 0 for epoch in self.lr_decay_epoch or []):
            raise ValueError(f"config option lr_decay_epoch={self.lr_decay_epoch} must hold epochs >= 0")
        for name in ("lr", "lr_decay"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"config option {name}={getattr(self, name)} must be a positive number")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"config option weight_decay={self.weight_decay} must be >= 0")
        if self.batch_size % self.images_per_step:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of images_per_step={self.images_per_step}"
            )
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"config option val_fraction={self.val_fraction} must be between 0 and 1")
        if self.only_content_preserve and not self.use_content_preserve:
            raise ValueError("only_content_preserve=True needs use_content_preserve=True")

    @property
    def prefix(self) -> str:
        """The release's experiment name: dataset and the switches that differ from the paper."""
        prefix = self.TRAINING_SET + ("-Human" if self.only_human else "")
        if not self.data_augmentation:
            prefix += "_wodataaug"
        if self.reduced_dim != 32:
            prefix += f"_{self.reduced_dim}redim"
        if list(self.loss_type) != ["L1Loss", "RankLoss"]:
            prefix += "".join(f"_{loss}" for loss in self.loss_type if loss != "L1Loss")
        if self.use_partition_aware:
            prefix += "_PA" + (f"-{self.partition_aware_type}part" if self.partition_aware_type != 9 else "")
        if self.use_content_preserve:
            prefix += "_CP" + (f"-{self.content_preserve_type}" if self.content_preserve_type != "gcn" else "")
            prefix += "_onlycontent" if self.only_content_preserve else ""
        if not self.use_rod_feature:
            prefix += "_woRoD"
        return prefix

    def create_experiment_dir(self) -> str:
        """Create ``exp_root/<name>`` (``_repeatN`` appended if taken) with checkpoints/ and logs/."""
        base = self.exp_name or self.prefix
        name, repeat = base, 0
        while True:
            path = os.path.join(self.exp_root, name)
            try:
                os.makedirs(path)
                break
            except FileExistsError:
                repeat += 1
                name = f"{base}_repeat{repeat}"
        os.makedirs(os.path.join(path, "checkpoints"))
        os.makedirs(os.path.join(path, "logs"))
        self.exp_name = name
        return path


# Options only training reads: scripts that load a trained model do not offer them.
TRAINING_OPTIONS = (
    "loss_type",
    "score_loss_over",
    "normalize_scores",
    "rank_loss_weighting",
    "seed",
    "deterministic",
    "only_human",
    "data_augmentation",
    "train_in_eval_mode",
    "visualize_partition_feature",
    "content_loss_weight",
    "visualize_heat_map",
    "batch_size",
    "lr_scheduler",
    "warmup_epochs",
    "max_epoch",
    "lr_decay_epoch",
    "eval_freq",
    "selection",
    "val_fraction",
    "checkpoint_steps",
    "view_per_image",
    "lr",
    "lr_decay",
    "weight_decay",
    "save_freq",
    "display_freq",
    "visualize_freq",
    "exp_root",
    "exp_name",
)

# The paper's ablation rows: --preset NAME of the training scripts sets these options.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("the paper's model: partition-aware (9 parts, with person) + content-preserving (gcn)", {}),
    "GAIC": (
        "GAIC baseline: multi-scale features, RoI+RoD, three-layer conv head",
        {"model_type": "GAIC", "use_partition_aware": False, "use_content_preserve": False},
    ),
    "baseline": (
        "our model without partition-aware and content-preserving features",
        {"use_partition_aware": False, "use_content_preserve": False},
    ),
    "PA": ("+ partition-aware only", {"use_content_preserve": False}),
    "CP": ("+ content-preserving only", {"use_partition_aware": False}),
    "PA-0part": ("partition type 0: the nine features averaged", {"partition_aware_type": 0}),
    "PA-1part": ("partition type 1: the person's region only", {"partition_aware_type": 1}),
    "PA-2part": ("partition type 2: person vs. background", {"partition_aware_type": 2}),
    "PA-9part": ("partition type 9 (default)", {"partition_aware_type": 9}),
    "PA-nohuman": ("partition-aware without the person's RoI feature", {"concat_with_human": False}),
    "CP-conv": ("content-preserving with 'conv' instead of graph reasoning", {"content_preserve_type": "conv"}),
    "CP-gcn": ("content-preserving with graph reasoning (default)", {"content_preserve_type": "gcn"}),
    "CP-only": ("score crops from the content-preserving feature alone", {"only_content_preserve": True}),
    "woRoD": ("without the RoD (discarded content) feature", {"use_rod_feature": False}),
    "loss-L1": ("score loss: smooth-L1 only", {"loss_type": ["L1Loss"]}),
    "loss-WL1-Rank": ("score loss: score-weighted smooth-L1 + rank", {"loss_type": ["WeightedL1Loss", "RankLoss"]}),
    "loss-L1-LVR": ("score loss: smooth-L1 + listwise view ranking", {"loss_type": ["L1Loss", "LVRLoss"]}),
    "loss-LVR": ("score loss: listwise view ranking only", {"loss_type": ["LVRLoss"]}),
    "GAIC-official": (
        "GAIC's release recipe: its model (mobilenetv2, reduced_dim 8), cv2 preprocessing and "
        "photometric augmentation, smooth-L1 on (MOS - 2.95) / 0.8, Adam without weight decay at a "
        "constant lr 1e-4, 80 epochs of 64 views, the whole model in eval mode as its net.eval() "
        "(BatchNorm statistics frozen, no dropout; needs --backbone_weight_path: its ImageNet file)",
        {
            "model_type": "GAIC-official",
            "backbone": "mobilenetv2",
            "reduced_dim": 8,
            "image_preprocessing": "gaic",
            "loss_type": ["L1Loss"],
            "normalize_scores": True,
            "weight_decay": 0.0,
            "lr_scheduler": "constant",
            "use_partition_aware": False,
            "use_content_preserve": False,
            "keep_aspect_ratio": True,
            "image_size": (256, 256),
            "train_in_eval_mode": True,
        },
    ),
}

cfg = Config()
