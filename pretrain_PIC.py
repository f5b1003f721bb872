"""Pre-train personalized cropping (PIC): one backbone, an objective and a subjective branch.

  python pretrain_PIC.py --data-root DATA --pretrained false      # official variant (the default)
  python pretrain_PIC.py --data-root DATA --objective_set PIC     # the same without GAICD

The official variant (``--variant official``, the published recipe, the release's ``pre_pic.py``)
trains the objective branch on ``objective_set``: GAICD's training split (the default, as the
release: GAIC's preprocessing and augmentation, `official_crops_per_step` (64) random views per
image, smooth-L1 against (MOS - 2.95) / 0.8) or the training users' mean score of each crop of the
images in ``PIC_release`` (``PIC``, for data without GAICD). Each step adds to that loss the
cross-entropy of `official_user_images_per_step` (4) augmented 256x256 images of
``PIC_release/pretrain/<user>/`` classified by their user (untils.pic_release_layout.ReleaseData), one Adam step
at `lr` (1e-4); an epoch is one pass over the objective images; after `max_epoch` epochs it writes
checkpoints/pretrain.pth (the release keeps every epoch and selects none). The rest of this text
is our variant (``--variant embedding``, ``pic_model.py``):

  python pretrain_PIC.py --data-root DATA --variant embedding                        # the users' average scores
  python pretrain_PIC.py --data-root DATA --variant embedding --objective_set GAICD  # GAICD's scores (or CPC)
  python pretrain_PIC.py --resume experiments/PIC_mobilenetv2/checkpoints/last.pth
  python pretrain_PIC.py --demo --demo-dir demo_runs   # the demo prior's pre-training (untils/pic_demo.py)

Each step scores `view_per_image` random candidate crops of each image with the objective branch
(GAIC's head on RoI+RoD features; `loss_type` losses against the objective scores) and classifies
which training user chose each of the `best_crops` best crops of the step's PIC images with the
subjective branch (cross-entropy over all training users, weighted by `subjective_loss_weight`).
With `--objective_set GAICD`/`CPC` the subjective branch gets its own batch of PIC images.
Same engine as train_on_GAICD.py (untils/training.py): Adam, warm-up + cosine, gradients
accumulated to `batch_size`, atomic checkpoints, `--resume`. After each epoch: SRCC/Acc5/Acc10 of
the objective branch and the user-classification accuracy on held-out images (`val_fraction`);
best-<metric>.pth keeps the best epoch of each. prior_PIC.py continues from best-srcc.pth. Test
users are never seen here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import config_PIC
from config_GAICD import MOS_MEAN, MOS_STD
from cropping_dataset import CPCDataset, GAICDataset
from cropping_model import crop_score_loss
from pic_dataset import PICData, PICImageDataset, config_path, load_pic_data
from pic_model import PICModel, build_official_model
from untils.atomic import copy_file_atomic
from untils.batching import (
    NamedSubset,
    ScoredCrops,
    SizeBucketBatchSampler,
    collate_crops,
    distributed,
    evaluation_loader,
)
from untils.boxes import flip_boxes_horizontal, rescale_boxes
from untils.checkpoint import config_to_dict, save_atomic
from untils.cli import run_script
from untils.config import given_config_options
from untils.evaluation import evaluate_scored
from untils.experiment import build_parser, launch
from untils.inference import move_batch
from untils.pic_demo import demo_pretrain_checkpoint, demo_pretrain_options
from untils.pic_format import pic_user_image
from untils.pic_recipe import RatedImage, augmented_user_image, rated_images
from untils.pic_release_layout import load_release_layout, rated_average
from untils.preprocessing import GAIC_SHORT_SIDE, IMAGE_NET_MEAN, IMAGE_NET_STD
from untils.runtime import seed_everything
from untils.training import (
    EpochSeededItems,
    LossFunction,
    Trainer,
    item_seed,
    sample_views,
    split_validation,
    subset_of,
)

BestCrops = dict[str, tuple[torch.Tensor, np.ndarray]]


@dataclass
class PretrainingOutput:
    """What a pre-training step's loss reads: objective scores (B, N) of the candidate crops, and
    user logits (M, num_users) of the training users' best crops with their users (M,)."""

    score: torch.Tensor
    user_logits: torch.Tensor
    user_labels: torch.Tensor


@dataclass
class SubjectiveData:
    """The PIC images the subjective branch learns from: the training and held-out images, and for
    each image the classifier labels (M,) and boxes (M, 4, original pixels) of the training users'
    best crops."""

    train: NamedSubset
    val: NamedSubset
    val_names: list[str]
    best_by_image: BestCrops


def best_crops_by_image(pic: PICData, count: int) -> BestCrops:
    """For each PIC image: the labels and boxes of the ``count`` best crops of each training user who rated it."""
    labels: dict[str, list[int]] = {}
    boxes: dict[str, list[np.ndarray]] = {}
    for label, user in enumerate(pic.train_users):
        for name in pic.images_of(user):
            best = pic.best_crops(user, name, count)
            labels.setdefault(name, []).extend([label] * len(best))
            boxes.setdefault(name, []).append(best)
    return {name: (torch.tensor(labels[name]), np.concatenate(boxes[name])) for name in labels}


def objective_dataset(cfg: config_PIC.Config, augment: bool) -> ScoredCrops:
    """GAICD's or CPC's scored crops for the objective branch (``objective_set`` GAICD/CPC)."""
    if cfg.objective_set == "GAICD":
        return GAICDataset(cfg, "train", cfg.only_human, cfg.keep_aspect_ratio, augment, require_heat_maps=False)
    return CPCDataset(cfg, cfg.only_human, cfg.keep_aspect_ratio, augment, require_heat_maps=False)


class PICPretrainer(Trainer):
    """Trains the objective and subjective branches of a PIC model together."""

    selection_metrics = ("srcc", "acc5", "acc10", "user_acc")
    # one process only (build_trainer), so the engine's model is the PIC model itself, never wrapped
    model: PICModel

    def __init__(
        self,
        cfg: config_PIC.Config,
        exp_path: str,
        device: torch.device,
        model: PICModel,
        train_set: ScoredCrops,
        val_names: list[str],
        objective_val: NamedSubset,
        subjective: SubjectiveData,
        loss_fn: LossFunction,
        progress: bool = True,
    ) -> None:
        super().__init__(cfg, exp_path, device, model, train_set, val_names, loss_fn, progress)
        self.objective_val = objective_val
        self.subjective = subjective
        self.subjective_val_names = subjective.val_names
        self.subjective_batches = None if cfg.objective_set == "PIC" else self._cycle_subjective_batches()

    # ----- data -----------------------------------------------------------------------------
    def _cycle_subjective_batches(self) -> Iterator[dict]:
        """Endless shuffled batches of training PIC images (objective_set GAICD/CPC)."""
        epoch = 0
        while True:
            sampler = SizeBucketBatchSampler(
                self.subjective.train, self.cfg.images_per_step, shuffle=True, seed=self.cfg.seed + 1
            )
            sampler.set_epoch(epoch)
            yield from DataLoader(
                self.subjective.train, batch_sampler=sampler, collate_fn=collate_crops, num_workers=self.cfg.num_workers
            )
            epoch += 1

    def best_crop_rois(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rois (M, 5), person boxes (M, 4), labels (M,))`` of the users' best crops of a batch of
        PIC images, in the batch's resized (and flipped) pixels."""
        resized_h, resized_w = batch["image"].shape[-2:]
        rois, humans, labels = [], [], []
        for image, name in enumerate(batch["name"]):
            image_labels, best_boxes = self.subjective.best_by_image[name]
            width, height = int(batch["width"][image]), int(batch["height"][image])
            boxes = rescale_boxes(torch.from_numpy(best_boxes), resized_w / width, resized_h / height)
            if bool(batch["flipped"][image]):
                boxes = flip_boxes_horizontal(boxes, resized_w)
            rois.append(torch.cat([boxes.new_full((len(boxes), 1), image), boxes], dim=1))
            humans.append(batch["human_box"][image].reshape(1, 4).cpu().expand(len(boxes), 4))
            labels.append(image_labels)
        device = batch["image"].device
        return torch.cat(rois).to(device), torch.cat(humans).to(device), torch.cat(labels).to(device)

    # ----- training -------------------------------------------------------------------------
    def forward(self, batch: dict) -> PretrainingOutput:
        """The objective scores of the batch's crops and the user logits of PIC images' best crops
        (the batch's own with objective_set PIC, else the next batch of PIC images)."""
        if self.subjective_batches is None:
            rois, humans, labels = self.best_crop_rois(batch)
            score, logits = self.model.pretraining_outputs(
                batch["image"], batch["crop_box"], batch["crop_valid"], rois, humans
            )
        else:
            score = self.model(batch["image"], batch["crop_box"], crop_valid=batch["crop_valid"]).score
            pic_batch = move_batch(next(self.subjective_batches), self.device)
            rois, humans, labels = self.best_crop_rois(pic_batch)
            logits = self.model.user_logits(pic_batch["image"], rois, humans)
        return PretrainingOutput(score, logits, labels)

    # ----- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def user_accuracy(self) -> float:
        """Share of the training users' best crops of held-out PIC images the classifier attributes right."""
        self.model.eval()
        hits = total = 0
        for batch in evaluation_loader(self.subjective.val, self.cfg.images_per_step, self.cfg.num_workers):
            batch = move_batch(batch, self.device)
            rois, humans, labels = self.best_crop_rois(batch)
            hits += int((self.model.user_logits(batch["image"], rois, humans).argmax(dim=1) == labels).sum())
            total += len(labels)
        return hits / max(total, 1)

    def evaluate(self) -> dict[str, float]:
        objective = evaluate_scored(
            self.core,
            self.objective_val,
            self.cfg.images_per_step,
            self.cfg.num_workers,
            self.progress,
            "objective validation",
            self.autocast_dtype,
            self.cfg.channels_last,
        )
        results = {key: objective[key] for key in ("srcc", "acc5", "acc10", "pcc")}
        results["user_acc"] = self.user_accuracy()
        return results

    def report_test(self) -> None:
        """Pre-training has no test split: test users are evaluated by finetune_PIC.py."""
        for name, best in self.best.items():
            print(
                f"best val {name} = {best['value']:.4f} at epoch {best['epoch']}: {self.checkpoint_dir}/best-{name}.pth"
            )


def held_out_split(dataset: ScoredCrops, cfg: config_PIC.Config) -> tuple[NamedSubset, list[str]]:
    """:func:`untils.training.split_validation` as pre-training uses it: always with held-out images
    (config_PIC offers selection 'val' only), so the training images are a subset."""
    train, val_names = split_validation(dataset, cfg)
    if val_names is None or not isinstance(train, NamedSubset):
        raise ValueError(f"selection={cfg.selection}: PIC pre-training selects on held-out images (selection val)")
    return train, val_names


def build_trainer(cfg: config_PIC.Config, exp_path: str, device: torch.device, progress: bool) -> PICPretrainer:
    """The PIC data, the model (its user classifier sized by the training users), the datasets and the trainer."""
    if distributed():
        raise SystemExit(
            "pretrain_PIC.py trains in one process: the subjective branch's passes are not "
            "wrapped for DistributedDataParallel; run it without torchrun"
        )
    pic = load_pic_data(cfg)
    if cfg.num_users not in (0, len(pic.train_users)):
        raise ValueError(f"num_users={cfg.num_users}, but {cfg.PIC_users} lists {len(pic.train_users)} training users")
    cfg.num_users = len(pic.train_users)
    model = PICModel(cfg)  # config_PIC's only model_type
    # one held-out rule (untils.training.held_out_images) for the PIC images and the objective set
    subjective_train, subjective_val_names = held_out_split(
        PICImageDataset(cfg, pic, pic.train_users, augment=cfg.data_augmentation), cfg
    )
    pic_images = PICImageDataset(cfg, pic, pic.train_users, augment=False)
    subjective = SubjectiveData(
        subjective_train,
        subset_of(pic_images, subjective_val_names),
        subjective_val_names,
        best_crops_by_image(pic, cfg.best_crops),
    )
    if cfg.objective_set == "PIC":
        train_set, val_names = subjective_train, subjective_val_names
        objective_val = subjective.val
    else:
        train_set, val_names = held_out_split(objective_dataset(cfg, cfg.data_augmentation), cfg)
        objective_val = subset_of(objective_dataset(cfg, augment=False), val_names)

    def loss_fn(output: PretrainingOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # the objective scores' loss_type losses + subjective_loss_weight x which user chose each best crop
        objective_loss = crop_score_loss(
            output.score.float(),
            batch["score"],
            cfg.loss_type,
            batch["crop_valid"],
            score_mean=train_set.score_mean,
            rank_loss_weighting=cfg.rank_loss_weighting,
        )
        subjective_loss = F.cross_entropy(output.user_logits.float(), output.user_labels)
        loss = objective_loss + cfg.subjective_loss_weight * subjective_loss
        return loss, {"objective_loss": objective_loss, "subjective_loss": subjective_loss, "total_loss": loss}

    return PICPretrainer(
        cfg, exp_path, device, model, train_set, val_names, objective_val, subjective, loss_fn, progress
    )


class RatedImageItems(Dataset):
    """Rated images (``untils.pic_recipe.RatedImage``) as crop-dataset items, so the official loop reads the
    training users' mean scores (objective_set PIC) the way it reads GAICD."""

    def __init__(self, examples: Sequence[RatedImage]) -> None:
        self.examples = list(examples)
        self.names = [example.name for example in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        return {
            "image": example.image[0],
            "crop_box": example.crop_box[0],
            "score": example.scores,
            "name": example.name,
        }

    def resized_size_of(self, index: int) -> tuple[int, int]:
        height, width = self.examples[index].image.shape[-2:]
        return width, height


def gaicd_training_split(cfg: config_PIC.Config) -> GAICDataset:
    """GAICD's training split as the release's pre-training reads it: GAIC's preprocessing (shorter
    side 256, cv2, / 256) and augmentation (``data_augmentation``); one error when GAICD is missing."""
    needed = [cfg.GAIC_image, cfg.GAIC_anno, cfg.GAIC_human, cfg.GAIC_human_split if cfg.only_human else cfg.GAIC_split]
    missing = [path for path in needed if not os.path.exists(path)]
    if missing:
        more = f" (and {len(missing) - 1} more of GAICD's files)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"the official pre-training trains its objective branch on GAICD's training split, as the release, "
            f"but {missing[0]} is missing{more}; GAICD is looked for in {cfg.GAIC_path} (--data-root, --GAIC_path); "
            "--objective_set PIC trains it on the training users' mean scores instead"
        )
    gaic_input = replace(
        cfg, image_preprocessing="gaic", image_size=(GAIC_SHORT_SIDE, GAIC_SHORT_SIDE), keep_aspect_ratio=True
    )
    return GAICDataset(
        gaic_input,
        "train",
        cfg.only_human,
        keep_aspect_ratio=True,
        augment=cfg.data_augmentation,
        require_heat_maps=False,
    )


def bgr_input(image: torch.Tensor) -> torch.Tensor:
    """An ImageNet-normalised RGB input (B, 3, H, W) with its channels in cv2's BGR order, normalised
    with the RGB statistics as the release's BGR path (``untils.pic_format.pic_crop_image(bgr_order=True)``)."""
    mean = image.new_tensor(IMAGE_NET_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(IMAGE_NET_STD).view(1, 3, 1, 1)
    return ((image * std + mean).flip(1) - mean) / std


def pretrain_official(cfg: config_PIC.Config, progress: bool = True) -> dict:
    """The official pre-training (module docstring); returns ``{"checkpoint", "exp_path", "history"}``."""
    release_dir = config_path(cfg.PIC_release, "PIC_release")
    release = load_release_layout(release_dir, cfg.num_positions)
    users = sorted(release.pretrain)
    if len(users) < 2:
        raise SystemExit(f"{release_dir}/pretrain needs one folder of images per training user (two or more)")
    on_gaicd = cfg.objective_set == "GAICD"
    objective: GAICDataset | RatedImageItems
    if on_gaicd:
        objective = gaicd_training_split(cfg)
    else:
        averages = rated_average([split.train for split in release.prior.values()])
        objective = RatedImageItems(rated_images(release.image_dir, averages))
    cfg.num_users = len(users)
    seed_everything(cfg.seed)
    model = build_official_model(cfg, cfg.backbone_weight_path if cfg.pretrained else None)
    labelled = [(path, label) for label, user in enumerate(users) for path in release.pretrain[user]]
    user_images = {}
    for path, _ in labelled:
        with Image.open(path) as photo:
            user_images[path] = pic_user_image(photo)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    per_step = cfg.official_user_images_per_step
    exp_path = cfg.create_experiment_dir()
    history = []
    model.train()
    for epoch in tqdm(range(cfg.max_epoch), desc="pre-training", disable=not progress):
        order = torch.randperm(len(objective), generator=generator).tolist()
        classes = torch.randperm(len(labelled), generator=generator).tolist()
        loader = DataLoader(
            EpochSeededItems(objective, cfg.seed, epoch),
            batch_sampler=[[index] for index in order],
            collate_fn=collate_crops,
            num_workers=cfg.num_workers if on_gaicd else 0,
        )
        sums = {"loss": 0.0, "objective_loss": 0.0, "user_loss": 0.0}
        for step, batch in enumerate(loader):
            batch = sample_views(batch, cfg.official_crops_per_step, [item_seed(cfg.seed, epoch, batch["name"][0])])
            image = bgr_input(batch["image"]) if cfg.channel_order == "bgr" else batch["image"]
            target = (batch["score"][0] - MOS_MEAN) / MOS_STD if on_gaicd else batch["score"][0]
            objective_loss = F.smooth_l1_loss(model.objective_scores(image, batch["crop_box"])[0], target)
            picks = [labelled[classes[(step * per_step + j) % len(classes)]] for j in range(per_step)]
            logits = model.user_logits(
                torch.cat([augmented_user_image(user_images[path], generator) for path, _ in picks])
            )
            user_loss = F.cross_entropy(logits, torch.tensor([label for _, label in picks]))
            loss = objective_loss + user_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            for key, value in (("loss", loss), ("objective_loss", objective_loss), ("user_loss", user_loss)):
                sums[key] += value.item()
        history.append({"epoch": epoch, **{key: total / len(order) for key, total in sums.items()}})
    path = os.path.join(exp_path, "checkpoints", "pretrain.pth")
    save_atomic(
        {
            "model": model.state_dict(),
            "config": config_to_dict(cfg),
            "model_type": "PIC",
            "stage": "pretrain",
            "users": users,
            "history": history,
        },
        path,
    )
    print(
        f"official pre-training ({len(users)} users, {len(objective)} {cfg.objective_set} objective images) "
        f"saved to {path}",
        flush=True,
    )
    return {"checkpoint": path, "exp_path": exp_path, "history": history}


def main(argv: Sequence[str] | None = None) -> Trainer | dict:
    parser = build_parser(
        __doc__,
        config_PIC.Config,
        with_demo=True,
        exclude=config_PIC.NOT_PIC_OPTIONS,
        demo_help="the demo prior's first step (untils/pic_demo.py): generate PIC users on photos of people in "
        "DEMO_DIR/pic/data, pre-train a small embedding model on the CPU, copy it to DEMO_DIR/pic/pretrain.pth "
        "(not a result of the paper)",
    )
    args = parser.parse_args(argv)
    if args.demo:  # the demo prior's first step (untils/pic_demo.py); the given options win
        trainer = launch(
            build_trainer,
            config_PIC.Config,
            args,
            prepare=lambda given: {**demo_pretrain_options(args.demo_dir), **given},
        )
        copy_file_atomic(os.path.join(trainer.checkpoint_dir, "best-srcc.pth"), demo_pretrain_checkpoint(args.demo_dir))
        print(f"demo pre-training saved to {demo_pretrain_checkpoint(args.demo_dir)}", flush=True)
        return trainer
    if config_PIC.Config(**given_config_options(args)).variant == "official":
        if args.resume:
            raise SystemExit("--resume is for the embedding variant's engine; the official pre-training restarts")
        return pretrain_official(config_PIC.Config(**given_config_options(args)), progress=not args.no_progress)
    return launch(build_trainer, config_PIC.Config, args)


if __name__ == "__main__":
    raise SystemExit(run_script(main))
