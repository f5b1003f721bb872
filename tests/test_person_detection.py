"""untils/person_detection.py: the main-person rule, duplicate merging, and where the detector comes from.

Expected results are worked out by hand in the comments (prominence, IoU, score ratios); the
torchvision paths use real model files and torch's real hub cache code, with only the network
(and, where said, the presence of torchvision's compiled ops) simulated.
"""

from __future__ import annotations

import os
import urllib.error
import warnings

import numpy as np
import pytest
import torch

from untils import person_detection
from untils.person_detection import (
    CONFIDENT_FRACTION,
    MAIN_PERSON_RULE,
    Detection,
    DetectorError,
    DetectorFallbackWarning,
    OfflinePersonDetector,
    TorchvisionPersonDetector,
    build_person_detector,
    choose_main_person,
    main_person,
    merge_duplicates,
    torchvision_ops_problem,
)
from untils.torchvision_compat import models

ARCH = "fasterrcnn_mobilenet_v3_large_fpn"
WIDTH, HEIGHT = 1000, 800  # half diagonal: hypot(1000, 800) / 2 = 640.31


# ----------------------------------------------------------------------------------------------
# The main person
# ----------------------------------------------------------------------------------------------

# A handrail: area 400x400 / 800000 = 0.2, centre (500, 450) 50 px from the image centre:
# prominence 0.2 * (1 - 50 / 640.31) = 0.184. The man: 150x400 / 800000 = 0.075, centre
# (175, 500), hypot(325, 100) = 340.04 px away: 0.075 * (1 - 340.04 / 640.31) = 0.035.
HANDRAIL_BOX = (300, 250, 700, 650)
MAN_BOX = (100, 300, 250, 700)


def test_handrail_beside_a_confident_man_does_not_win():
    handrail, man = Detection(HANDRAIL_BOX, 0.68, "hog"), Detection(MAN_BOX, 0.98, "hog")
    assert person_detection.prominence(HANDRAIL_BOX, WIDTH, HEIGHT) == pytest.approx(0.18438, abs=1e-4)
    assert person_detection.prominence(MAN_BOX, WIDTH, HEIGHT) == pytest.approx(0.03517, abs=1e-4)
    assert main_person([handrail, man], WIDTH, HEIGHT) == 1  # 0.68 / 0.98 = 0.69 < 0.8: set aside
    assert main_person([man, handrail], WIDTH, HEIGHT) == 0
    chosen = choose_main_person([handrail, man], WIDTH, HEIGHT)
    assert [d.to_json() for d in chosen] == [
        {"box": list(HANDRAIL_BOX), "score": 0.68, "detector": "hog", "main": False, "also_found_by": []},
        {"box": list(MAN_BOX), "score": 0.98, "detector": "hog", "main": True, "also_found_by": []},
    ]
    assert str(CONFIDENT_FRACTION) in MAIN_PERSON_RULE and "without a score" in MAIN_PERSON_RULE


def test_confidence_threshold_is_a_fraction_of_the_detectors_best():
    man = Detection(MAN_BOX, 0.98, "hog")
    # 0.79 / 0.98 = 0.806 >= 0.8: confident enough, and then the larger, more central box wins
    assert main_person([man, Detection(HANDRAIL_BOX, 0.79, "hog")], WIDTH, HEIGHT) == 1
    # 0.78 / 0.98 = 0.796 < 0.8
    assert main_person([man, Detection(HANDRAIL_BOX, 0.78, "hog")], WIDTH, HEIGHT) == 0
    assert main_person([], WIDTH, HEIGHT) is None
    assert choose_main_person([], WIDTH, HEIGHT) == []


def test_scores_are_compared_only_within_a_detector():
    # A face-grown box has no score and is never set aside; a weak torchvision score is not
    # compared with HOG's margins. Both large central boxes beat the small confident man.
    face = Detection(HANDRAIL_BOX, None, "face", evidence=(450, 260, 550, 360))
    assert main_person([Detection(MAN_BOX, 2.5, "hog"), face], WIDTH, HEIGHT) == 1
    weak = Detection(HANDRAIL_BOX, 0.55, "torchvision:x")
    assert main_person([Detection(MAN_BOX, 2.5, "hog"), weak], WIDTH, HEIGHT) == 1
    # Within one detector a non-positive best still keeps itself (margin 0.2 * |best| below it).
    assert main_person([Detection(MAN_BOX, -0.1, "svm"), Detection(HANDRAIL_BOX, -0.5, "svm")], WIDTH, HEIGHT) == 0


# ----------------------------------------------------------------------------------------------
# Duplicates
# ----------------------------------------------------------------------------------------------


def test_duplicates_merge_across_and_within_detectors():
    man = Detection((100, 100, 200, 400), 0.9, "hog")
    # IoU with the man: (95 * 290) / (30000 + 30000 - 27550) = 0.849 > 0.5
    man_again = Detection((105, 110, 205, 410), 0.7, "hog")
    # His face (130..170, 100..140) lies inside his HOG box, in its top half (centre y 120 <= 250)
    man_by_face = Detection((60, 90, 240, 520), None, "face", evidence=(130, 100, 170, 140))
    woman_by_face = Detection((600, 50, 780, 500), None, "face", evidence=(670, 60, 710, 100))
    # The same face found at a second scale: IoU 81000 / 91200 = 0.888 with the first
    woman_by_face_again = Detection((600, 40, 790, 520), None, "face", evidence=(668, 55, 712, 99))
    # Her legs, found by HOG: IoU 14400 / 81000 = 0.178 and her face is not inside: a separate detection
    legs = Detection((620, 300, 700, 480), 0.6, "hog")
    merged = merge_duplicates([man_by_face, woman_by_face, legs, man_again, man, woman_by_face_again])
    # Scored first (0.9, 0.7 merged, 0.6), then those without a score in their given order
    assert [(d.box, d.detector, d.also_found_by) for d in merged] == [
        ((100, 100, 200, 400), "hog", ("face",)),
        ((620, 300, 700, 480), "hog", ()),
        ((600, 50, 780, 500), "face", ()),
    ]
    assert merge_duplicates([]) == []


def test_face_below_the_middle_of_a_box_is_another_person():
    adult = Detection((100, 0, 300, 600), 1.2, "hog")
    # A child's face at y 350..390, in the adult's bottom half; the boxes' IoU is 0.17
    child = Detection((150, 330, 250, 600), None, "face", evidence=(180, 350, 220, 390))
    assert merge_duplicates([adult, child]) == [adult, child]


def test_offline_detector_lists_one_box_per_person():
    from skimage import data

    detections = OfflinePersonDetector()(data.astronaut())
    assert detections and merge_duplicates(detections) == detections
    boxes = np.array([d.box for d in detections], dtype=float)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            inter = np.prod(
                np.clip(np.minimum(boxes[i, 2:], boxes[j, 2:]) - np.maximum(boxes[i, :2], boxes[j, :2]), 0, None)
            )
            union = np.prod(boxes[i, 2:] - boxes[i, :2]) + np.prod(boxes[j, 2:] - boxes[j, :2]) - inter
            assert inter / union <= person_detection.DUPLICATE_IOU


# ----------------------------------------------------------------------------------------------
# Where the detector comes from
# ----------------------------------------------------------------------------------------------


def _fallback_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DetectorFallbackWarning)]


@pytest.fixture()
def empty_hub(monkeypatch, tmp_path):
    """torch's hub cache in an empty folder, and a weights API that records every download asked for."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    asked = []

    def no_network(self, *args, **kwargs):
        asked.append(self.url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(models._api.WeightsEnum, "get_state_dict", no_network)
    return asked


def test_torchvision_compiled_ops_load_in_the_pinned_install():
    """The pinned torch/torchvision pair: the default detector's operators run here (issue 20)."""
    from untils.torchvision_compat import torchvision

    kept = torchvision.ops.nms(
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
        torch.tensor([0.9, 0.8, 0.7]),
        0.5,
    )
    assert kept.tolist() == [0, 2]  # IoU of the first two: 81 / 100 = 0.81 > 0.5; the third overlaps neither
    assert torchvision_ops_problem("cpu") is None


def test_missing_ops_fall_back_once_without_downloading(monkeypatch, empty_hub):
    problem = "RuntimeError: operator torchvision::nms does not exist"  # what a mismatched torchvision reports
    monkeypatch.setattr(person_detection, "torchvision_ops_problem", lambda device: problem)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        detector = build_person_detector()
    (message,) = _fallback_warnings(caught)
    assert "cannot run on this installation" in message and problem in message and "\n" not in message
    assert isinstance(detector, OfflinePersonDetector) and detector.name in message
    assert empty_hub == []  # nothing was downloaded for a model that cannot run


def test_failed_download_falls_back_once(monkeypatch, empty_hub):
    monkeypatch.setattr(person_detection, "torchvision_ops_problem", lambda device: None)  # an install whose ops work
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        detector = build_person_detector()
    (message,) = _fallback_warnings(caught)
    url = models.get_model_weights(ARCH).DEFAULT.url
    assert empty_hub == [url]
    assert "could not get" in message and "URLError" in message and url in message and "\n" not in message
    assert detector.name == OfflinePersonDetector().name and detector.name in message


def test_downloads_off_uses_only_the_hub_cache(monkeypatch, empty_hub):
    monkeypatch.setattr(person_detection, "torchvision_ops_problem", lambda device: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        detector = build_person_detector(allow_download=False)
    (message,) = _fallback_warnings(caught)
    assert "not in torch's hub cache and downloads are off" in message and empty_hub == []
    assert isinstance(detector, OfflinePersonDetector)


def _torchvision_format_state() -> dict:
    """A state_dict as torchvision ships them: saved from FrozenBatchNorm2d, so no num_batches_tracked."""
    torch.manual_seed(0)
    state = getattr(models.detection, ARCH)(weights=None, weights_backbone=None).state_dict()
    return {name: value for name, value in state.items() if not name.endswith("num_batches_tracked")}


class NotATensor:
    """Unpickling this needs a class from this module: weights-only loading must refuse it."""


def test_cached_weights_load_without_network(monkeypatch, tmp_path):
    monkeypatch.setattr(person_detection, "torchvision_ops_problem", lambda device: None)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    downloads = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, *args, **kwargs: downloads.append(url))
    url = models.get_model_weights(ARCH).DEFAULT.url
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(url)
    cached.parent.mkdir(parents=True)
    state = _torchvision_format_state()
    torch.save(state, cached)
    for allow_download in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            detector = build_person_detector(allow_download=allow_download)
        assert _fallback_warnings(caught) == [] and downloads == []
        assert isinstance(detector, TorchvisionPersonDetector) and detector.name == f"torchvision:{ARCH}"
        assert detector.weights_source == url
        loaded = detector.model.state_dict()
        assert all(torch.equal(loaded[name], value) for name, value in state.items())
    torch.save({"model": NotATensor()}, cached)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert isinstance(build_person_detector(allow_download=False), OfflinePersonDetector)
    (message,) = _fallback_warnings(caught)
    assert "could not get" in message and "UnpicklingError" in message


def test_weights_file_given_offline(tmp_path):
    weights = tmp_path / "detector.pth"
    torch.save(_torchvision_format_state(), weights)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        detector = build_person_detector(str(weights))
    assert _fallback_warnings(caught) == []
    assert isinstance(detector, TorchvisionPersonDetector)
    assert detector.name == f"torchvision:{ARCH}" and detector.weights_source == str(weights)
    assert all(isinstance(d, Detection) for d in detector(np.zeros((64, 80, 3), dtype=np.uint8)))


def test_a_user_who_names_weights_is_told_when_the_ops_cannot_run(monkeypatch, tmp_path):
    weights = tmp_path / "detector.pth"
    torch.save(_torchvision_format_state(), weights)
    problem = "RuntimeError: operator torchvision::nms does not exist"
    monkeypatch.setattr(person_detection, "torchvision_ops_problem", lambda device: problem)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DetectorError, match="cannot run on this installation") as error:
            build_person_detector(str(weights))  # asked for by name: an error, not a silent fallback
    assert problem in str(error.value) and "--human-box" in str(error.value)
    assert _fallback_warnings(caught) == []


def test_bad_detector_files_and_names_are_refused(tmp_path):
    with pytest.raises(DetectorError, match="does not exist"):
        build_person_detector(str(tmp_path / "nothing.pth"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(DetectorError, match=f"other.pth' is not a state_dict of torchvision's {ARCH}"):
        build_person_detector(str(tmp_path / "other.pth"))
    torch.save({"model": NotATensor()}, tmp_path / "pickled.pth")
    with pytest.raises(DetectorError, match="holds objects other than tensors"):
        build_person_detector(str(tmp_path / "pickled.pth"))
    with pytest.raises(DetectorError, match="unknown detector architecture 'yolo'"):
        build_person_detector(arch="yolo")


def test_crop_tool_detects_with_the_default_detector_from_a_weights_file(tmp_path):
    """The default detector's whole path in the crop tool: a randomly initialised Faster R-CNN saved
    as a weights file, loaded weights-only through --detector-weights, named in the JSON."""
    import dataclasses
    import json
    import subprocess
    import sys

    from PIL import Image
    from skimage import data

    from config_GAICD import Config
    from cropping_model import build_crop_model

    torch.manual_seed(0)
    cfg = Config(backbone="mobilenetv2", pretrained=False)
    checkpoint = tmp_path / "tiny-hcic.pth"
    torch.save(
        {"model": build_crop_model(cfg, "HCIC").state_dict(), "config": dataclasses.asdict(cfg), "model_type": "HCIC"},
        checkpoint,
    )
    weights = tmp_path / "detector.pth"
    torch.save(_torchvision_format_state(), weights)
    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(
        [
            sys.executable,
            os.path.join(root, "crop.py"),
            str(tmp_path / "astronaut.png"),
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(tmp_path / "crops"),
            "--detect-human",
            "--detector-weights",
            str(weights),
            "--top-k",
            "1",
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert "DetectorFallbackWarning" not in run.stderr and "offline" not in run.stderr
    result = json.loads((tmp_path / "crops" / "astronaut.json").read_text())
    assert result["person"]["detector"] == f"torchvision:{ARCH}"
