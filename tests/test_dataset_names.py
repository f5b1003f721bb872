"""Names read from a dataset's files are kept inside their folders (issue 22): a heat map is never
written, and an image never read, outside the folder the configuration names."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, build_gaicd_sample
from untils.dataset_files import gaicd_image_path, heat_map_path
from untils.safe_paths import UnsafeNameError


@pytest.mark.parametrize("name", ["../escape.jpg", "/etc/escape.jpg", "a/../../escape.jpg"])
def test_names_leading_outside_are_refused(tmp_path, name):
    with pytest.raises(UnsafeNameError):
        heat_map_path(str(tmp_path / "heat_maps"), name)
    with pytest.raises(UnsafeNameError):
        gaicd_image_path(str(tmp_path / "images"), name)


def test_a_symlink_out_of_the_image_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"x")
    images = tmp_path / "images"
    images.mkdir()
    (images / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeNameError):
        gaicd_image_path(str(images), "link/secret.jpg")
    assert heat_map_path(str(tmp_path / "maps"), "sub/photo.jpg") == str(tmp_path / "maps" / "sub" / "photo.png")


def test_heat_map_generation_writes_nothing_outside_for_a_hostile_name(tmp_path):
    root = build_gaicd_sample(tmp_path / "data")
    gaicd = root / "GAICD"
    crops = json.loads((gaicd / "image_crop.json").read_text())
    hostile = "../../../victim.jpg"  # from images/train/: the data root's parent
    crops[hostile] = crops["211958.jpg"]
    shutil.copy(gaicd / "images" / "train" / "211958.jpg", tmp_path / "victim.jpg")
    (gaicd / "image_crop.json").write_text(json.dumps(crops))
    split = json.loads((gaicd / "original_data_split.json").read_text())
    split["train"].append(hostile)
    (gaicd / "original_data_split.json").write_text(json.dumps(split))
    before = sorted(p.name for p in tmp_path.iterdir())
    run = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "generate_pseudo_heatmap.py"),
            "--data-root",
            str(root),
            "--out",
            str(tmp_path / "out" / "maps"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert run.returncode != 0 and "victim.jpg" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no victim.png beside the data
