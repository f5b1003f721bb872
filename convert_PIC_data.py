"""Convert personalized-cropping (PIC) ratings into this project's JSON layout, and between it and the
release's CSV layout (github Cooperxjt/PIC).

Our layout (``<data_root>/PIC``: users.json, annotations/<user>.json, images/, pretrain/; see
pic_dataset.py) is what every PIC script reads; the official variant (``--variant official``) also
reads the release's layout (``<data_root>/PIC_release``: prior/, finetune/<N>/, pretrain/, images/).
Each subcommand checks its whole input first, with the loaders' own checks, and lists every problem
in one error; it then writes a complete new folder or nothing, and replaces an existing one only
with ``--overwrite``. Whatever it leaves out is listed on stderr.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

import config_PIC
from pic_dataset import PRETRAIN_FOLDER, PICData, config_path, load_pic_data, split_user_images
from untils.atomic import write_folder_atomic
from untils.cli import add_debug_option, add_option_aliases, run_script
from untils.dataset_errors import problems_error
from untils.dataset_files import check_boxes, read_human_boxes
from untils.pic_checks import named_image_size, read_pretrain_folder
from untils.pic_format import (
    RELEASE_FINETUNE_FOLDER,
    RELEASE_IMAGE_FOLDER,
    RELEASE_PRETRAIN_FOLDER,
    RELEASE_PRIOR_FOLDER,
    write_pic_annotations,
    write_release_csv,
)
from untils.pic_ratings import read_ratings_csv
from untils.pic_release_layout import (
    ReleaseData,
    UserRatings,
    load_release_layout,
    merged_crops,
)
from untils.safe_paths import copy_named_files
from untils.training import held_out_images

LISTED_NAMES = 20  # a report of left-out entries names this many


def report_left_out(count_text: str, names: Sequence[str]) -> None:
    """One stderr line: how many entries were left out and why (``count_text``), with their names."""
    if names:
        more = f" and {len(names) - LISTED_NAMES} more" if len(names) > LISTED_NAMES else ""
        print(f"note: {len(names)} {count_text}: {', '.join(names[:LISTED_NAMES])}{more}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# ratings: a CSV of per-annotator ratings -> our layout
# ----------------------------------------------------------------------------------------------


def split_users(users: Sequence[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded (train, test) split of user ids; at least one of each when there are two or more users."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"--test-fraction {test_fraction} must be in [0, 1)")
    order = sorted(users)
    random.Random(seed).shuffle(order)
    test_count = round(test_fraction * len(order))
    if test_fraction > 0 and len(order) > 1:
        test_count = min(max(test_count, 1), len(order) - 1)
    return sorted(order[test_count:]), sorted(order[:test_count])


def read_person_boxes(path: str, sizes: dict[str, tuple[int, int] | None]) -> dict[str, list[float]]:
    """A ``human_bboxes.json`` to copy, each box checked against its photo (when at hand) as the loader does."""
    boxes = read_human_boxes(path)
    problems = []
    for name, box in boxes.items():
        size = sizes.get(name)
        problem = check_boxes(box.reshape(1, 4), *size)[2] if size else None
        if problem:
            problems.append(f"image {name}: person box {problem}")
    if problems:
        raise problems_error(f"human box file {path}", problems)
    return {name: box.tolist() for name, box in boxes.items()}


def convert_ratings_csv(
    csv_path: str,
    out_root: str,
    image_dir: str | None = None,
    human_boxes: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``<out_root>/PIC`` from a ratings CSV; returns ``{"path", "train", "test"}``.

    Users are split into train/test with ``split_users(test_fraction, seed)``. With ``image_dir`` the
    rated images are copied into ``PIC/images`` (a missing one is an error); without it, put them
    there yourself. ``human_boxes`` is a ``human_bboxes.json`` to copy alongside.
    """
    ratings = read_ratings_csv(csv_path, image_dir)
    pic_dir = os.path.join(out_root, "PIC")
    images = sorted({name for user_ratings in ratings.values() for name in user_ratings})
    sizes = {name: named_image_size(image_dir, name)[0] for name in images} if image_dir is not None else {}
    boxes = None if human_boxes is None else read_person_boxes(human_boxes, sizes)
    train, test = split_users(list(ratings), test_fraction, seed)
    for user_ratings in ratings.values():
        for entry in user_ratings.values():
            order = sorted(range(len(entry["score"])), key=lambda i: -entry["score"][i])
            entry["bbox"] = [entry["bbox"][i] for i in order]
            entry["score"] = [entry["score"][i] for i in order]
    if image_dir is None:
        print(
            f"note: no --images: the boxes of {csv_path} were not checked against the photos; put them in "
            f"{os.path.join(pic_dir, 'images')} (the PIC scripts check them as they load)",
            file=sys.stderr,
        )

    def write(folder: str) -> None:
        write_pic_annotations(folder, train, test, ratings, boxes)
        os.makedirs(os.path.join(folder, "images"))  # without image_dir, the user puts the photos here
        if image_dir is not None:
            copy_named_files(images, image_dir, os.path.join(folder, "images"))

    write_folder_atomic(pic_dir, overwrite, write)
    return {"path": pic_dir, "train": train, "test": test}


# ----------------------------------------------------------------------------------------------
# to-release and from-release: our layout <-> the release's CSV layout
# ----------------------------------------------------------------------------------------------


def _as_json_entry(annotation: Any) -> dict[str, list]:
    return {"bbox": annotation.boxes.tolist(), "score": annotation.scores.tolist()}


def _release_rows(data: PICData, user: str, names: Sequence[str]) -> dict[str, dict[str, list]]:
    return {name: _as_json_entry(data.annotations[user][name]) for name in names}


def fractional_boxes(data: PICData) -> list[str]:
    """The crops the release cannot read: it parses each box corner with ``int()``."""
    return [
        f"user {user}, image {name}: crop box {index} {box.tolist()}"
        for user in data.users
        for name, entry in data.annotations[user].items()
        for index, box in enumerate(entry.boxes)
        if not np.array_equal(box, np.round(box))
    ]


def write_release_layout(
    data: PICData,
    out_dir: str,
    shots: Sequence[int] = (5, 10, 20),
    val_fraction: float = 0.2,
    test_fraction: float = 0.5,
    seed: int = 0,
    overwrite: bool = False,
) -> str:
    """Write ``data`` (our layout) in the release's layout under ``out_dir``; returns ``out_dir``.

    Training users: ``prior/<user>_train.csv`` and ``_val.csv`` (``held_out_images(val_fraction,
    seed)``). Test users: ``finetune/<N>/train`` = the N support images of ``split_user_images`` and
    ``finetune/<N>/val`` = its test images (the same for every N, as the embedding variant reports
    on), so both variants see the same images. ``pretrain/`` is our ``PIC/pretrain/`` when there is
    one, else each training user's ``_train.csv`` images. Boxes must be whole pixels (the release
    reads them with ``int()``).
    """
    fractional = fractional_boxes(data)
    if fractional:
        raise problems_error(
            f"PIC folder {data.root}: the release reads box corners as whole pixels (int()), round these boxes first",
            fractional,
        )
    splits = {
        n: {
            user: split_user_images(
                user, data.images_of(user), n, 0, test_fraction, seed, options=("--shots", "--test-fraction")
            )
            for user in data.test_users
        }
        for n in shots
    }
    problems: list[str] = []
    our_pretrain_dir = os.path.join(data.root, PRETRAIN_FOLDER)
    our_pretrain = read_pretrain_folder(our_pretrain_dir, problems)
    if problems:
        raise problems_error(f"PIC folder {data.root}", problems)
    in_files = {
        user: {name for by_user in splits.values() for name in by_user[user].support + by_user[user].test}
        for user in data.test_users
    }
    report_left_out(
        "test users' images are in no file of the release's layout (beyond the largest N, kept for validation)",
        [f"{user}/{name}" for user in data.test_users for name in data.images_of(user) if name not in in_files[user]],
    )
    if data.human_boxes:
        report_left_out("person boxes are not carried (the release's layout has none)", sorted(data.human_boxes))

    def write(folder: str) -> None:
        names = sorted({name for user in data.users for name in data.images_of(user)})
        copy_named_files(names, data.image_dir, os.path.join(folder, RELEASE_IMAGE_FOLDER))
        pretrain_dir = os.path.join(folder, RELEASE_PRETRAIN_FOLDER)
        if our_pretrain:
            copy_named_files(
                [os.path.relpath(path, our_pretrain_dir) for paths in our_pretrain.values() for path in paths],
                our_pretrain_dir,
                pretrain_dir,
            )
        prior_dir = os.path.join(folder, RELEASE_PRIOR_FOLDER)
        for user in data.train_users:
            held_out = set(held_out_images(data.images_of(user), val_fraction, seed))
            train = [name for name in data.images_of(user) if name not in held_out]
            write_release_csv(os.path.join(prior_dir, f"{user}_train.csv"), _release_rows(data, user, train))
            write_release_csv(
                os.path.join(prior_dir, f"{user}_val.csv"),
                _release_rows(data, user, [n for n in data.images_of(user) if n in held_out]),
            )
            if not our_pretrain:
                copy_named_files(
                    train,
                    data.image_dir,
                    os.path.join(pretrain_dir, user),
                    target_name=lambda name: name.replace("/", "_"),
                )
        for n, by_user in splits.items():
            shots_dir = os.path.join(folder, RELEASE_FINETUNE_FOLDER, str(n))
            for user, split in by_user.items():
                write_release_csv(
                    os.path.join(shots_dir, "train", f"{user}_train.csv"), _release_rows(data, user, split.support)
                )
                write_release_csv(
                    os.path.join(shots_dir, "val", f"{user}_val.csv"), _release_rows(data, user, split.test)
                )

    write_folder_atomic(out_dir, overwrite, write)
    return out_dir


def release_to_json(release: ReleaseData, out_root: str, overwrite: bool = False) -> str:
    """Write ``<out_root>/PIC`` (our layout) from a release-layout folder; returns its path.

    The prior's users are the training users, the fine-tuning users the test users; a user's
    ratings are the union of all that user's files (a crop rated twice must have one score). Our
    layout holds no splits: the N-shot files become one set per user. ``pretrain/`` is copied
    through to ``PIC/pretrain/``.
    """
    pic_dir = os.path.join(out_root, "PIC")
    files: dict[str, list[UserRatings]] = {}
    for user, split in release.prior.items():
        files.setdefault(user, []).extend([split.train, split.val])
    test_users = sorted({user for by_user in release.finetune.values() for user in by_user} - set(release.prior))
    for by_user in release.finetune.values():
        for user, split in by_user.items():
            files.setdefault(user, []).extend([split.train, split.val])
    problems: list[str] = []
    ratings: dict[str, dict[str, dict[str, list]]] = {}
    for user, ratings_files in files.items():
        ratings[user] = {}
        for name, crops in merged_crops(ratings_files).items():
            problems += [
                f"user {user}, image {name}: crop {box} has different scores in the release's files "
                f"({sorted(set(scores))})"
                for box, scores in crops.values()
                if len(set(scores)) > 1
            ]
            ratings[user][name] = {
                "bbox": [box for box, _ in crops.values()],
                "score": [scores[0] for _, scores in crops.values()],
            }
    if problems:
        raise problems_error(f"release-layout PIC folder {release.root}", problems)
    names = sorted({name for user_ratings in ratings.values() for name in user_ratings})
    pretrain_dir = os.path.join(release.root, RELEASE_PRETRAIN_FOLDER)
    pretrain = [os.path.relpath(path, pretrain_dir) for paths in release.pretrain.values() for path in paths]
    report_left_out(f"files in {release.root} name no user's CSV and are not converted", release.ignored)
    named = set(names)
    report_left_out(
        f"photos in {release.image_dir} are named by no CSV and are not copied",
        sorted(
            os.path.relpath(os.path.join(folder, entry), release.image_dir)
            for folder, _, entries in os.walk(release.image_dir)
            for entry in entries
            if os.path.relpath(os.path.join(folder, entry), release.image_dir) not in named
        ),
    )

    def write(folder: str) -> None:
        copy_named_files(names, release.image_dir, os.path.join(folder, "images"))
        if pretrain:
            copy_named_files(pretrain, pretrain_dir, os.path.join(folder, PRETRAIN_FOLDER))
        write_pic_annotations(folder, release.train_users, test_users, ratings)

    write_folder_atomic(pic_dir, overwrite, write)
    return pic_dir


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------

EXAMPLES = {
    "ratings": "  # per-annotator ratings (CSV columns annotator,image,x1,y1,x2,y2,score) -> ./dataset/PIC\n"
    "  python convert_PIC_data.py ratings ratings.csv --out ./dataset --images ./photos\n",
    "from-release": "  # the release's CSV layout -> ./dataset/PIC\n"
    "  python convert_PIC_data.py from-release ./PIC_release --out ./dataset\n",
    "to-release": "  # ./dataset/PIC -> ./dataset/PIC_release, with 5-, 10- and 20-shot fine-tuning splits\n"
    "  python convert_PIC_data.py to-release ./dataset --shots 5 10 20\n",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="examples:\n" + "".join(EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    add_debug_option(common)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[common],
            help=summary,
            description=description,
            epilog="example:\n" + EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    ratings = add_command(
        "ratings",
        "a ratings CSV -> DATA_ROOT/PIC",
        """\
Per-annotator crop ratings -> our layout in DATA_ROOT/PIC. The CSV has the header
annotator,image,x1,y1,x2,y2,score (extra columns ignored), UTF-8, one row per rated crop, boxes in
pixels of the original image, checked as the PIC scripts check them (at least 10 distinct crops of
an image per annotator; with --images, inside the photo). Image names are plain paths inside
--images. Annotators become users, split into training and test users; each image's crops are
written best first.""",
    )
    ratings.add_argument("csv", help="the ratings CSV")
    ratings.add_argument("--out", required=True, metavar="DATA_ROOT", help="data root to write PIC/ into")
    ratings.add_argument(
        "--images",
        metavar="DIR",
        help="folder of the rated images, copied into PIC/images (default: copy them yourself)",
    )
    ratings.add_argument(
        "--human-boxes", metavar="JSON", help="a human_bboxes.json ({image: [x1, y1, x2, y2]}) to copy"
    )
    ratings.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="share of the annotators held out as test users (default: 0.2)",
    )
    ratings.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the train/test split of users (default: 0)"
    )

    from_release = add_command(
        "from-release",
        "the release's CSV layout -> DATA_ROOT/PIC",
        """\
A folder in the release's layout (prior/<user>_train.csv and _val.csv,
finetune/<N>/train/<user>_train.csv and val/<user>_val.csv, images/, pretrain/<user>/) -> our
layout in DATA_ROOT/PIC. The prior's users become training users, the fine-tuning users test users;
each user's files are merged into one set (our layout keeps no splits); pretrain/ is copied to
PIC/pretrain/.""",
    )
    from_release.add_argument("release", metavar="RELEASE_DIR", help="the folder in the release's layout")
    from_release.add_argument("--out", required=True, metavar="DATA_ROOT", help="data root to write PIC/ into")
    from_release.add_argument(
        "--positions",
        type=int,
        metavar="N",
        help="require exactly N crops per image, as the official model's fixed views "
        "(default: any number, at least 10)",
    )

    to_release = add_command(
        "to-release",
        "DATA_ROOT/PIC -> the release's CSV layout",
        """\
Our layout in DATA_ROOT/PIC -> the release's layout. Training users: prior/<user>_train.csv and
_val.csv (--val-fraction of their images held out, as pre-training and the prior hold them out);
pretrain/ is PIC/pretrain/ when there is one, else each training user's _train.csv images. Boxes
must be whole pixels (the release reads them with int()). Test users: finetune/<N>/train/<user>_train.csv = N images to
fine-tune on, finetune/<N>/val/<user>_val.csv = the held-out test images: the same for every N,
and the same images finetune_PIC.py's embedding variant reports on. A test user's other images
(beyond the largest N; at least one, kept for validation) are in no file.""",
    )
    to_release.add_argument("data_root", metavar="DATA_ROOT", help="data root holding PIC/")
    to_release.add_argument(
        "--out",
        metavar="RELEASE_DIR",
        help="folder to write (default: DATA_ROOT/PIC_release, where the official variant reads)",
    )
    to_release.add_argument(
        "--shots",
        type=int,
        nargs="+",
        default=[5, 10, 20],
        metavar="N",
        help="the fine-tuning set sizes N (default: 5 10 20)",
    )
    for option, field, kind, metavar, text in (
        ("--val-fraction", "val_fraction", float, "F", "share of a training user's images in _val.csv"),
        ("--test-fraction", "user_test_fraction", float, "F", "share of a test user's images held out for testing"),
        ("--seed", "seed", int, "N", "seed of the splits"),
    ):  # defaults: the PIC scripts' own, from config_PIC.Config
        default = getattr(config_PIC.Config, field)
        help_text = f"{text} (default: the config's {field}, {default})"
        to_release.add_argument(option, type=kind, default=default, metavar=metavar, help=help_text)
    return add_option_aliases(parser)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "ratings":
        summary = convert_ratings_csv(
            args.csv, args.out, args.images, args.human_boxes, args.test_fraction, args.seed, args.overwrite
        )
        print(f"wrote {summary['path']}: {len(summary['train'])} training users, {len(summary['test'])} test users")
        return summary
    if args.command == "from-release":
        if args.positions is not None and args.positions < 1:
            parser.error(f"--positions must be >= 1, got {args.positions}")
        release = load_release_layout(args.release, args.positions, "--positions")
        path = release_to_json(release, args.out, args.overwrite)
        print(
            f"wrote {path}: {len(release.train_users)} training users, "
            f"{len({user for by_user in release.finetune.values() for user in by_user})} fine-tuning users"
        )
        return {"path": path}
    if min(args.shots) < 1:
        parser.error(f"--shots must be >= 1, got {args.shots}")
    for option, value in (("--val-fraction", args.val_fraction), ("--test-fraction", args.test_fraction)):
        if not 0 < value < 1:
            parser.error(f"{option} must be between 0 and 1, got {value}")
    cfg = config_PIC.Config(data_root=args.data_root)
    data = load_pic_data(cfg)
    out_dir = args.out or config_path(cfg.PIC_release, "PIC_release")
    write_release_layout(
        data, out_dir, sorted(set(args.shots)), args.val_fraction, args.test_fraction, args.seed, args.overwrite
    )
    print(
        f"wrote {out_dir}: {len(data.train_users)} training users, {len(data.test_users)} test users with "
        f"{', '.join(map(str, sorted(set(args.shots))))}-shot splits"
    )
    return {"path": out_dir}


if __name__ == "__main__":
    raise SystemExit(run_script(main))
