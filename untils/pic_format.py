"""PIC's formats: the folders (our JSON layout, ``pic_dataset.load_pic_data``, and the release's CSV
layout, ``untils.pic_release_layout.load_release_layout``), the official model's fixed candidate views and its
two inputs (:func:`pic_crop_image`, :func:`pic_user_image`).

Here, not in ``pic_dataset.py`` or ``pic_model.py``, because the converters (``convert_PIC_data.py``),
the generated benchmark (``untils/pic_synthetic.py``), the model and the crop tool all need them,
and ``untils`` modules import nothing from the top level. The folder format itself is described
in ``pic_dataset.py``.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from untils.atomic import write_json_atomic
from untils.preprocessing import gaic_preprocess, normalize_pixels

USER_IMAGE_SIZE = 256  # the subjective branch sees the whole photo at 256x256
USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a user id names the user's file


def write_pic_annotations(
    pic_dir: str,
    train_users: Sequence[str],
    test_users: Sequence[str],
    ratings: Mapping[str, Mapping[str, Mapping[str, list]]],
    human_boxes: Mapping[str, Sequence[float]] | None = None,
) -> None:
    """Write users.json, annotations/<user>.json (``ratings[user][image] = {"bbox", "score"}``) and,
    when given, human_bboxes.json into ``pic_dir``."""
    bad = [user for user in list(train_users) + list(test_users) if not USER_ID_PATTERN.match(user)]
    if bad:
        raise ValueError(f"user ids must be letters, digits, '_', '-' or '.' (not first): {bad[:5]}")
    folder = os.path.join(pic_dir, "annotations")
    os.makedirs(folder, exist_ok=True)
    write_json_atomic(
        os.path.join(pic_dir, "users.json"), {"train": list(train_users), "test": list(test_users)}, indent=1
    )
    for user in list(train_users) + list(test_users):
        write_json_atomic(os.path.join(folder, f"{user}.json"), ratings[user])
    if human_boxes is not None:
        write_json_atomic(
            os.path.join(pic_dir, "human_bboxes.json"),
            {name: [float(v) for v in box] for name, box in human_boxes.items()},
        )


# The layout of PIC's release (github Cooperxjt/PIC): per-user CSV files of ``name,bbox,score``.
RELEASE_CSV_HEADER = ("name", "bbox", "score")
# Per-annotator ratings (convert_PIC_data.py ratings reads them; the web page writes them): boxes in
# the upright photo's pixels.
RATINGS_CSV_COLUMNS = ("annotator", "image", "x1", "y1", "x2", "y2", "score")
RELEASE_PRIOR_FOLDER = "prior"  # <user>_train.csv, <user>_val.csv of the training users
RELEASE_FINETUNE_FOLDER = "finetune"  # <N>/train/<user>_train.csv, <N>/val/<user>_val.csv of the test users
RELEASE_PRETRAIN_FOLDER = "pretrain"  # <user>/<image>: the user-classification images, one folder per user
RELEASE_IMAGE_FOLDER = "images"  # the photos the CSV names point to


def _number_text(value: float) -> str:
    """The shortest text that reads back as the same float, without a trailing ".0"."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def write_release_csv(path: str, ratings: Mapping[str, Mapping[str, list]]) -> None:
    """Write one user's ``{image: {"bbox": [[x1, y1, x2, y2], ...], "score": [...]}}`` as the release's
    CSV: one row per crop, ``bbox`` as "[x1,y1,x2,y2]" in original pixels, crops in the given order,
    every number exactly as given."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(RELEASE_CSV_HEADER)
        for name, entry in ratings.items():
            for box, score in zip(entry["bbox"], entry["score"], strict=True):
                writer.writerow([name, "[" + ",".join(map(_number_text, box)) + "]", _number_text(score)])


FIXED_VIEW_SCALES = (0.95, 0.85, 0.75, 0.65)
FIXED_VIEW_ANCHORS = ((0.0, 0.25), (0.5, 0.25), (1.0, 0.25), (0.0, 0.75), (0.5, 0.75), (1.0, 0.75))


def fixed_views(width: int, height: int) -> list[list[int]]:
    """24 candidate crops of a ``width`` x ``height`` image in a fixed order, for the official
    model's per-position offsets (the release's CPC views are not published as a rule): for each
    scale of both sides (0.95 .. 0.65), the crop placed at six anchors of the free space (left,
    centre, right; upper and lower quarter), whole pixels."""
    views = []
    for scale in FIXED_VIEW_SCALES:
        crop_w, crop_h = round(scale * width), round(scale * height)
        for ax, ay in FIXED_VIEW_ANCHORS:
            x1, y1 = round(ax * (width - crop_w)), round(ay * (height - crop_h))
            views.append([x1, y1, x1 + crop_w, y1 + crop_h])
    return views


def pic_crop_image(rgb: np.ndarray, bgr_order: bool = False) -> tuple[torch.Tensor, float, float]:
    """The official model's objective-branch input: GAIC's release preprocessing
    (``untils.preprocessing.gaic_preprocess``). ``bgr_order=True`` feeds the channels in cv2's BGR order,
    as the release does (only for checkpoints trained that way)."""
    return gaic_preprocess(np.ascontiguousarray(rgb[..., ::-1]) if bgr_order else rgb)


def pic_user_image(photo: Image.Image) -> torch.Tensor:
    """The official model's subjective-branch input (1, 3, 256, 256): the whole photo resized to
    256x256 (PIL bilinear, as torchvision's ``Resize`` on a PIL image), [0, 1], ImageNet mean/std.
    No random augmentation: the release's test-time jitter is a training transform."""
    resized = photo.convert("RGB").resize((USER_IMAGE_SIZE, USER_IMAGE_SIZE), Image.Resampling.BILINEAR)
    return normalize_pixels(np.asarray(resized, dtype=np.float32) / 255.0).unsqueeze(0)
