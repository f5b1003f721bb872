"""Writing a PIC folder: the per-user rating format that ``pic_dataset.load_pic_data`` reads.

Here, not in ``pic_dataset.py``, because both the converter of real ratings
(``pic_dataset.convert_ratings_csv``) and the generated benchmark (``untils/pic_synthetic.py``)
write the format, and ``untils`` modules import nothing from the top level. The format itself
is described in ``pic_dataset.py``.
"""
from __future__ import annotations

import json
import os
import re
from typing import Mapping, Optional, Sequence

USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a user id names the user's file


def write_pic_annotations(pic_dir: str, train_users: Sequence[str], test_users: Sequence[str],
                          ratings: Mapping[str, Mapping[str, Mapping[str, list]]],
                          human_boxes: Optional[Mapping[str, Sequence[float]]] = None) -> None:
    """Write users.json, annotations/<user>.json (``ratings[user][image] = {"bbox", "score"}``) and,
    when given, human_bboxes.json into ``pic_dir``."""
    bad = [user for user in list(train_users) + list(test_users) if not USER_ID_PATTERN.match(user)]
    if bad:
        raise ValueError(f"user ids must be letters, digits, '_', '-' or '.' (not first): {bad[:5]}")
    folder = os.path.join(pic_dir, "annotations")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(pic_dir, "users.json"), "w") as stream:
        json.dump({"train": list(train_users), "test": list(test_users)}, stream, indent=1)
    for user in list(train_users) + list(test_users):
        with open(os.path.join(folder, f"{user}.json"), "w") as stream:
            json.dump(ratings[user], stream)
    if human_boxes is not None:
        with open(os.path.join(pic_dir, "human_bboxes.json"), "w") as stream:
            json.dump({name: [float(v) for v in box] for name, box in human_boxes.items()}, stream)
