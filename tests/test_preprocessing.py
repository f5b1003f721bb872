"""The one preprocessing module against hand-computed references, and the photo specs the models declare."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import config_PIC
from config_GAICD import Config
from cropping_model import GAICOfficialModel, build_crop_model
from pic_model import PICModel, PICOfficialModel
from untils.preprocessing import GAIC_RELEASE_SPEC, PhotoSpec, network_input, photo_input

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def photo(width: int = 300, height: int = 200) -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("bgr_order", [False, True])
def test_gaic_input_is_cv2_bilinear_over_256_normalised(bgr_order):
    image = photo()
    pixels = np.asarray(image)[..., ::-1] if bgr_order else np.asarray(image)
    resized = cv2.resize(np.ascontiguousarray(pixels), (384, 256)).astype(np.float64) / 256
    expected = torch.from_numpy(((resized - MEAN) / STD).transpose(2, 0, 1))
    got = network_input(image, (384, 256), "gaic", bgr_order)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)


def test_hcic_input_is_lanczos_over_255_normalised_and_refuses_bgr():
    image = photo()
    resized = np.asarray(image.resize((96, 64), Image.Resampling.LANCZOS), dtype=np.float64) / 255
    expected = torch.from_numpy(((resized - MEAN) / STD).transpose(2, 0, 1))
    torch.testing.assert_close(network_input(image, (96, 64), "hcic").double(), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="bgr_order"):
        network_input(image, (96, 64), "hcic", bgr_order=True)


def test_photo_input_resizes_as_the_spec_says():
    spec = PhotoSpec("gaic", (256, 256), True, "gaic")
    assert spec.resized_size(300, 200) == (384, 256)  # shorter side 256, sides multiples of 32
    assert photo_input(photo(), spec).shape == (3, 256, 384)
    with pytest.raises(ValueError, match="candidate rule 'grid'"):
        PhotoSpec("gaic", (256, 256), True, "grid")


def test_every_model_declares_its_photo_spec():
    hcic = build_crop_model(Config(backbone="mobilenetv2", pretrained=False, image_size=(320, 320)), "HCIC")
    assert hcic.photo_spec == PhotoSpec("hcic", (320, 320), True, "hcic", uses_person=True)
    gaic = build_crop_model(Config(backbone="mobilenetv2", pretrained=False, image_preprocessing="gaic"), "GAIC")
    assert gaic.photo_spec.preprocessing == gaic.photo_spec.candidates == "gaic" and not gaic.photo_spec.uses_person
    assert GAICOfficialModel().photo_spec == GAIC_RELEASE_SPEC
    embedding = PICModel(config_PIC.Config(backbone="mobilenetv2", pretrained=False, num_users=0))
    assert embedding.photo_spec.takes_user and embedding.photo_spec.uses_person
    official = PICOfficialModel(num_users=3, num_positions=24)
    assert official.photo_spec == PhotoSpec("gaic", (256, 256), True, "pic", takes_user_image=True)
