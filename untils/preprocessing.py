"""How a photo becomes a network input: ImageNet normalisation, the two resize rules (the HCIC
release's and GAIC's), and :class:`PhotoSpec`, each model's declaration of the input it wants.

One module for the datasets, the crop tool and PIC alike, so the same photo gives the same input
(to the bit) wherever it is prepared.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from untils.boxes import resized_size

# The ImageNet statistics every backbone here was trained with: inputs are normalised by them.
IMAGE_NET_MEAN = (0.485, 0.456, 0.406)
IMAGE_NET_STD = (0.229, 0.224, 0.225)
GAIC_SHORT_SIDE = 256
GAIC_PIXEL_DIVISOR = 256.0  # GAIC's release divides uint8 pixels by 256, not 255
PREPROCESSINGS = ("hcic", "gaic")
CANDIDATE_RULES = ("hcic", "gaic", "pic")
CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class PhotoSpec:
    """The input a crop model wants, declared by the model (its ``photo_spec``).

    ``preprocessing``: :func:`network_input`'s rule (``hcic`` or ``gaic``), at ``image_size`` /
    ``keep_aspect_ratio`` (``untils.boxes.resized_size``), its channels in ``channel_order``
    (``rgb``, or ``bgr``: cv2's order, which PIC's release trained on; gaic only); ``candidates``:
    the candidate rule of ``untils.crop_candidates``;
    ``uses_person``: whether it reads ``human_box``; ``takes_user``: whether it is called with a
    ``user`` (one of its users' ids); ``takes_user_image``: whether it is called with a
    ``user_image`` (the whole photo, :func:`untils.pic_format.pic_user_image`).
    """

    preprocessing: str
    image_size: tuple[int, int]
    keep_aspect_ratio: bool
    candidates: str
    uses_person: bool = False
    takes_user: bool = False
    takes_user_image: bool = False
    channel_order: str = "rgb"

    def __post_init__(self) -> None:
        if self.preprocessing not in PREPROCESSINGS:
            raise ValueError(f"preprocessing {self.preprocessing!r}: expected one of {', '.join(PREPROCESSINGS)}")
        if self.candidates not in CANDIDATE_RULES:
            raise ValueError(f"candidate rule {self.candidates!r}: expected one of {', '.join(CANDIDATE_RULES)}")
        if self.channel_order not in CHANNEL_ORDERS or (self.channel_order == "bgr" and self.preprocessing != "gaic"):
            raise ValueError(
                f"channel order {self.channel_order!r} with {self.preprocessing} preprocessing: expected "
                "rgb, or bgr with gaic"
            )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The network input size ``(w, h)`` of a ``width`` x ``height`` photo."""
        return resized_size(width, height, self.image_size, self.keep_aspect_ratio)


def spec_of_config(cfg, uses_person: bool = False, takes_user: bool = False) -> PhotoSpec:
    """The spec of a model trained with a ``config_GAICD.Config``-like ``cfg``: its preprocessing
    (also its candidate rule) and resize rule."""
    return PhotoSpec(
        cfg.image_preprocessing,
        tuple(cfg.image_size),
        bool(cfg.keep_aspect_ratio),
        cfg.image_preprocessing,
        uses_person=uses_person,
        takes_user=takes_user,
    )


# GAIC's release test code: shorter side 256, sides multiples of 32, its candidate generators.
GAIC_RELEASE_SPEC = PhotoSpec("gaic", (GAIC_SHORT_SIDE, GAIC_SHORT_SIDE), True, "gaic")


def normalize_pixels(pixels: np.ndarray) -> torch.Tensor:
    """(h, w, 3) float32 RGB in [0, 1] -> (3, h, w) float32, ImageNet-normalised."""
    mean = np.array(IMAGE_NET_MEAN, dtype=np.float32)
    std = np.array(IMAGE_NET_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1)))


def normalize_image(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> (3, h, w) float32, scaled to [0, 1] then ImageNet-normalised."""
    return normalize_pixels(np.asarray(image, dtype=np.float32) / 255.0)


def gaic_resized_pixels(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """GAIC's resize-and-divide rule: ``cv2.resize`` (bilinear) to ``size`` (w, h), float32 / 256."""
    return cv2.resize(np.ascontiguousarray(pixels), size).astype(np.float32) / GAIC_PIXEL_DIVISOR


def network_input(
    image: Image.Image, size: tuple[int, int], preprocessing: str, bgr_order: bool = False
) -> torch.Tensor:
    """An 8-bit RGB photo as a model's input (3, h, w) of ``size`` (w, h): hcic resizes with PIL's
    Lanczos and divides by 255 (the HCIC release), gaic with cv2's bilinear and by 256 (GAIC's).
    ``bgr_order`` (gaic only) feeds the channels in cv2's BGR order, as PIC's release does."""
    if preprocessing == "gaic":
        pixels = np.asarray(image)
        return normalize_pixels(gaic_resized_pixels(pixels[..., ::-1] if bgr_order else pixels, size))
    if preprocessing != "hcic" or bgr_order:
        raise ValueError(f"preprocessing {preprocessing!r} (bgr_order={bgr_order}): expected hcic (RGB) or gaic")
    return normalize_image(image.resize(size, Image.Resampling.LANCZOS))


def photo_input(image: Image.Image, spec: PhotoSpec, size: tuple[int, int] | None = None) -> torch.Tensor:
    """:func:`network_input` of an 8-bit RGB photo as ``spec`` says (``size``: its resized size, when known)."""
    size = spec.resized_size(*image.size) if size is None else size
    return network_input(image, size, spec.preprocessing, spec.channel_order == "bgr")


def gaic_preprocess(rgb: np.ndarray) -> tuple[torch.Tensor, float, float]:
    """A photo as the test code of GAIC's release prepares it: ``(image (1, 3, H', W'), ratio_w, ratio_h)``.

    ``rgb``: (H, W, 3) uint8 in RGB order. ``cv2.resize`` (bilinear, on the uint8 pixels) so the
    shorter side is 256 and each side a multiple of 32 (Python's ``round``, as the release),
    divided by 256.0, ImageNet mean/std. ``ratio_w = W' / W`` and ``ratio_h = H' / H`` map original
    pixels to the resized image (``untils.boxes.rescale_boxes``).
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        described = f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"gaic_preprocess expects an (H, W, 3) uint8 RGB array, got {described}")
    height, width = rgb.shape[:2]
    resized_w, resized_h = GAIC_RELEASE_SPEC.resized_size(width, height)
    image = normalize_pixels(gaic_resized_pixels(rgb, (resized_w, resized_h))).unsqueeze(0)
    return image, resized_w / width, resized_h / height
