"""Options for personalized image cropping (PIC): pre-training, the prior model, few-shot fine-tuning.

PIC ("Crop the Way You Like: Personalized Image Cropping by Integrating Subjective and Objective
Features"): ``variant`` official is the published method, embedding this project's extension (both
in ``pic_model.py``). Importing this module has no side effects; every field can be overridden
from the command line of the PIC scripts.

The per-user data lives in ``<data_root>/PIC`` (format: ``pic_dataset.py``). Pre-training's
objective branch learns from ``objective_set``: GAICD's crop scores (the official variant's default,
as the release), the training users' average scores (``PIC``, the embedding variant's default) or
CPC's (embedding variant); GAICD and CPC paths are inherited from ``config_GAICD.Config``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from config_GAICD import LOSS_TYPES, _opt
from config_GAICD import Config as GAICDConfig
from untils.cli import add_debug_option, add_demo_options, add_option_aliases
from untils.config import add_config_arguments, check_choice

PIC_BACKBONES = ("mobilenetv2", "shufflenetv2", "vgg16", "resnet50")
OBJECTIVE_SETS = ("PIC", "GAICD", "CPC")
OFFICIAL_OBJECTIVE_SETS = ("GAICD", "PIC")  # the release pre-trains on GAICD; PIC: data without GAICD
VARIANTS = ("official", "embedding")
FINETUNE_SCOPES = ("embedding", "head")
POSITION_HEADS = ("linear", "conv1d")  # pic_model.POSITION_HEADS
CHANNEL_ORDERS = ("rgb", "bgr")
_POSITIVE_INTS = (
    "reduced_dim",
    "batch_size",
    "max_epoch",
    "view_per_image",
    "eval_freq",
    "images_per_step",
    "best_crops",
    "subjective_dim",
    "embed_dim",
    "taste_dim",
    "preference_hidden",
    "prior_epochs",
    "prior_episodes_per_step",
    "support_images",
    "finetune_images",
    "finetune_val_images",
    "finetune_steps",
    "finetune_eval_every",
    "align_size",
    "num_positions",
    "official_crops_per_step",
    "official_user_images_per_step",
    "official_prior_epochs",
    "official_finetune_epochs",
)


@dataclass
class Config(GAICDConfig):
    PIC_path: str | None = _opt("PIC folder holding users.json, annotations/, images/")
    PIC_image: str | None = _opt("PIC images")
    PIC_users: str | None = _opt("PIC users.json (train/test user ids)")
    PIC_anno: str | None = _opt("PIC annotations/ folder, one <user>.json per user")
    PIC_human: str | None = _opt("PIC human_bboxes.json (optional file)")
    PIC_release: str | None = _opt(
        "the official variant's data: a folder in the release's CSV layout (untils.pic_release_layout.ReleaseData)"
    )

    model_type: str = field(default="PIC", metadata={"help": "PIC (the only model of the PIC scripts)"})
    variant: str = _opt(
        "official: the published method (user logits -> per-position offsets); embedding: this "
        "project's set-encoder user embedding",
        "official",
    )
    reduced_dim: int = _opt("channels of the reduced feature map", 8)
    align_size: int = _opt("RoI/RoD align size (official variant)", 9)
    num_positions: int = _opt(
        "official variant: candidate crops per image, in their fixed order, each with its "
        "own personal offset (CPC's 24 views in the release)",
        24,
    )
    attention: bool = _opt(
        "official variant: DANet's dual attention (External-Attention-pytorch's DAModule) before "
        "DimRed in the subjective branch",
        False,
    )
    position_head: str = _opt(
        "official variant: FC_layers_3, user logits -> position offsets: linear (the release's "
        "prior) or conv1d (its fine-tuning model: Conv1d(1, 1, 40, stride 39), 945 users -> 24)",
        "linear",
    )
    channel_order: str = _opt(
        "official variant: channel order of the objective branch's photo, rgb or bgr (cv2's, "
        "as the release trained; its bare state_dicts default to bgr)",
        "rgb",
    )
    official_crops_per_step: int = _opt("official pre-training: GAICD views scored per image (the release: 64)", 64)
    official_user_images_per_step: int = _opt(
        "official pre-training: augmented 256x256 images classified by their user per step (the release: 4)", 4
    )
    official_prior_epochs: int = _opt("official prior: epochs per training user (the release: 20)", 20)
    official_prior_lr: float = _opt("official prior: learning rate (the release: 1e-3)", 1e-3)
    official_finetune_epochs: int = _opt("official fine-tuning: epochs over the N images (the release: 10)", 10)
    official_finetune_lr: float = _opt("official fine-tuning: learning rate (the release: 1e-3)", 1e-3)
    backbone: str = field(default="mobilenetv2", metadata={"help": f"one of {', '.join(PIC_BACKBONES)}"})
    use_partition_aware: bool = field(default=False, metadata={"help": "not part of PIC: must stay false"})
    use_content_preserve: bool = field(default=False, metadata={"help": "not part of PIC: must stay false"})
    selection: str = _opt("PIC selects checkpoints on images held out from training ('val' only)", "val")
    rank_loss_weighting: str = _opt(
        "RankLoss pair weight: sign of the score difference, or sin (the HCIC release)", "sign"
    )

    # pre-training (pretrain_PIC.py)
    objective_set: str | None = _opt(
        f"the objective branch's crop scores: {', '.join(OBJECTIVE_SETS)} (PIC: the training users' average score "
        f"of each crop, for data without GAICD); the official variant takes {' or '.join(OFFICIAL_OBJECTIVE_SETS)}. "
        "Default: GAICD for the official variant (the release), PIC for the embedding variant"
    )
    best_crops: int = _opt(
        "a user's top crops per image: the subjective branch's training examples and the "
        "evidence a user is embedded from",
        3,
    )
    subjective_dim: int = _opt("size of the subjective crop feature", 64)
    subjective_loss_weight: float = _opt("weight of the user-classification loss", 1.0)
    num_users: int = _opt(
        "training users the subjective branch classifies (set by pretrain_PIC.py from users.json; 0: no classifier)", 0
    )

    # prior model (prior_PIC.py)
    embed_dim: int = _opt("size of a user's embedding", 16)
    taste_dim: int = _opt("crop taste features the embedding weighs", 32)
    preference_hidden: int = _opt("hidden units of the preference module's MLPs", 64)
    prior_epochs: int = _opt("epochs of prior training (one episode per training user and image)", 60)
    prior_lr: float = _opt("learning rate of prior training", 3e-3)
    prior_episodes_per_step: int = _opt("episodes (user, query image, support images) per optimiser step", 4)
    support_images: int = _opt("images a user is embedded from in a prior-training episode", 5)

    # few-shot fine-tuning (finetune_PIC.py)
    finetune_images: int = _opt("N: a test user's annotated images used for fine-tuning (5, 10, 20...)", 5)
    finetune_val_images: int = _opt("a test user's images (not N, not test) that select the fine-tuning step", 10)
    user_test_fraction: float = _opt("share of a test user's images held out for the reported metrics", 0.5)
    finetune_scope: str = _opt(
        "what fine-tuning changes: 'embedding' (the user's embedding) or 'head' (also the "
        "preference head, a per-user copy)",
        "embedding",
    )
    finetune_steps: int = _opt("fine-tuning steps (each over all N images)", 60)
    finetune_lr: float = _opt("fine-tuning learning rate", 0.02)
    finetune_eval_every: int = _opt("validate every N fine-tuning steps", 5)
    finetune_reg: float = _opt("weight of the pull towards the prior's embedding (and head) while fine-tuning", 0.01)

    def __post_init__(self) -> None:
        if self.PIC_path is None:
            self.PIC_path = os.path.join(self.data_root, "PIC")
        self._derive("PIC_image", self.PIC_path, "images")
        self._derive("PIC_users", self.PIC_path, "users.json")
        self._derive("PIC_anno", self.PIC_path, "annotations")
        self._derive("PIC_human", self.PIC_path, "human_bboxes.json")
        self._derive("PIC_release", self.data_root, "PIC_release")
        if self.objective_set is None:
            self.objective_set = "GAICD" if self.variant == "official" else "PIC"
        super().__post_init__()

    def validate(self) -> None:
        check_choice("model_type", self.model_type, ("PIC",))
        check_choice("variant", self.variant, VARIANTS)
        check_choice("backbone", self.backbone, PIC_BACKBONES)
        check_choice(
            "objective_set",
            self.objective_set,
            OFFICIAL_OBJECTIVE_SETS if self.variant == "official" else OBJECTIVE_SETS,
        )
        check_choice("finetune_scope", self.finetune_scope, FINETUNE_SCOPES)
        check_choice("position_head", self.position_head, POSITION_HEADS)
        check_choice("channel_order", self.channel_order, CHANNEL_ORDERS)
        check_choice("selection", self.selection, ("val",))
        check_choice("rank_loss_weighting", self.rank_loss_weighting, ("sign", "sin"))
        check_choice("lr_scheduler", self.lr_scheduler, ("cosine", "step"))
        for loss in self.loss_type:
            check_choice("loss_type", loss, LOSS_TYPES)
        if self.use_partition_aware or self.use_content_preserve:
            raise ValueError(
                "PIC scores crops with the GAIC head: use_partition_aware and use_content_preserve must be false"
            )
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            raise ValueError(f"config option image_size={self.image_size} must be two sizes >= 32")
        for name in _POSITIVE_INTS:
            if getattr(self, name) < 1:
                raise ValueError(f"config option {name}={getattr(self, name)} must be >= 1")
        if self.num_users < 0:
            raise ValueError(f"config option num_users={self.num_users} must be >= 0")
        if self.batch_size % self.images_per_step:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of images_per_step={self.images_per_step}"
            )
        for name in ("val_fraction", "user_test_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"config option {name}={getattr(self, name)} must be between 0 and 1")
        for name in ("prior_lr", "finetune_lr", "official_prior_lr", "official_finetune_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"config option {name}={getattr(self, name)} must be > 0")
        for name in ("subjective_loss_weight", "finetune_reg"):
            if getattr(self, name) < 0:
                raise ValueError(f"config option {name}={getattr(self, name)} must be >= 0")

    @property
    def prefix(self) -> str:
        """Experiment name: PIC, the objective set when it is not PIC's own, the backbone."""
        objective = "" if self.objective_set == "PIC" else f"_{self.objective_set}"
        return f"PIC{objective}_{self.backbone}"


# Options of the shared config that no PIC stage reads (the human-centric model's modules, FCDB/FLMS,
# heat maps): the PIC scripts do not offer them.
NOT_PIC_OPTIONS = (
    "use_partition_aware",
    "partition_aware_type",
    "concat_with_human",
    "visualize_partition_feature",
    "use_content_preserve",
    "only_content_preserve",
    "content_preserve_type",
    "content_loss_weight",
    "visualize_heat_map",
    "normalize_scores",
    "score_loss_over",
    "image_preprocessing",
    "predefined_pkl",
    "FCDB_path",
    "FCDB_image",
    "FCDB_anno",
    "FCDB_human",
    "FCDB_split",
    "FLMS_path",
    "FLMS_image",
    "FLMS_anno",
    "FLMS_human",
    "heat_map_dir",
    "CPC_heat_map",
    "GAIC_heat_map",
)
# Options only pre-training's engine reads (prior_PIC.py and finetune_PIC.py have their own loops).
ENGINE_OPTIONS = (
    "batch_size",
    "lr_scheduler",
    "warmup_epochs",
    "max_epoch",
    "lr_decay_epoch",
    "eval_freq",
    "selection",
    "checkpoint_steps",
    "view_per_image",
    "lr",
    "lr_decay",
    "save_freq",
    "display_freq",
    "visualize_freq",
    "subjective_loss_weight",
    "deterministic",
    "precision",
)


def script_parser(description: str, with_demo: bool = False) -> argparse.ArgumentParser:
    """The command line of the scripts that start from a PIC checkpoint (prior_PIC.py, finetune_PIC.py);
    ``with_demo``: also ``--demo`` (the demo prior's step, untils/pic_demo.py, which names the checkpoint)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=not with_demo, metavar="PATH", help="the checkpoint to start from")
    if with_demo:
        add_demo_options(
            parser,
            "the demo prior's step on generated users, from DEMO_DIR/pic/pretrain.pth (written by "
            "pretrain_PIC.py --demo) to DEMO_DIR/pic/prior.pth, small CPU settings (not a result of the paper)",
        )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load a checkpoint that holds more than tensors and plain data (UNSAFE: such a file "
        "can run code; only for files you made yourself with an older version)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_option(parser)
    add_config_arguments(parser, Config, exclude=NOT_PIC_OPTIONS + ENGINE_OPTIONS)
    return add_option_aliases(parser)


cfg = Config()
