"""Convert personalized-cropping (PIC) ratings into this project's JSON layout, and between it and the
release's CSV layout (github Cooperxjt/PIC).

Our layout (``<data_root>/PIC``: users.json, annotations/<user>.json, images/; see pic_dataset.py)
is what every PIC script reads; the official variant (``--variant official``) also reads the
release's layout (``<data_root>/PIC_release``: prior/, finetune/<N>/, pretrain/, images/). Each
subcommand checks its whole input first and lists every problem in one error; it then writes a
complete new folder or nothing, and replaces an existing one only with ``--overwrite``.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional, Sequence

import config_PIC
from pic_dataset import convert_ratings_csv, load_pic_data, load_release_layout, release_to_json, write_release_layout
from untils.cli import add_debug_option, add_option_aliases, run_script

EXAMPLES = {
    "ratings": "  # per-annotator ratings (CSV columns annotator,image,x1,y1,x2,y2,score) -> ./dataset/PIC\n"
               "  python convert_PIC_data.py ratings ratings.csv --out ./dataset --images ./photos\n",
    "from-release": "  # the release's CSV layout -> ./dataset/PIC\n"
                    "  python convert_PIC_data.py from-release ./PIC_release --out ./dataset\n",
    "to-release": "  # ./dataset/PIC -> ./dataset/PIC_release, with 5-, 10- and 20-shot fine-tuning splits\n"
                  "  python convert_PIC_data.py to-release ./dataset --shots 5 10 20\n",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, epilog="examples:\n" + "".join(EXAMPLES.values()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    add_debug_option(common)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=summary, description=description,
                                   epilog="example:\n" + EXAMPLES[name],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    ratings = add_command("ratings", "a ratings CSV -> DATA_ROOT/PIC", """\
Per-annotator crop ratings -> our layout in DATA_ROOT/PIC. The CSV has the header
annotator,image,x1,y1,x2,y2,score (extra columns ignored), one row per rated crop, boxes in pixels
of the original image (the PIC scripts need at least 10 crops of an image per annotator).
Annotators become users, split into training and test users; each image's crops are written best
first.""")
    ratings.add_argument("csv", help="the ratings CSV")
    ratings.add_argument("--out", required=True, metavar="DATA_ROOT", help="data root to write PIC/ into")
    ratings.add_argument("--images", metavar="DIR",
                         help="folder of the rated images, copied into PIC/images (default: copy them yourself)")
    ratings.add_argument("--human-boxes", metavar="JSON", help="a human_bboxes.json ({image: [x1, y1, x2, y2]}) "
                         "to copy")
    ratings.add_argument("--test-fraction", type=float, default=0.2, metavar="F",
                         help="share of the annotators held out as test users (default: 0.2)")
    ratings.add_argument("--seed", type=int, default=0, metavar="N",
                         help="seed of the train/test split of users (default: 0)")

    from_release = add_command("from-release", "the release's CSV layout -> DATA_ROOT/PIC", """\
A folder in the release's layout (prior/<user>_train.csv and _val.csv,
finetune/<N>/train/<user>_train.csv and val/<user>_val.csv, images/) -> our layout in
DATA_ROOT/PIC. The prior's users become training users, the fine-tuning users test users; each
user's files are merged into one set (our layout keeps no splits).""")
    from_release.add_argument("release", metavar="RELEASE_DIR", help="the folder in the release's layout")
    from_release.add_argument("--out", required=True, metavar="DATA_ROOT", help="data root to write PIC/ into")
    from_release.add_argument("--positions", type=int, metavar="N",
                              help="require exactly N crops per image, as the official model's fixed views "
                                   "(default: any number, at least 10)")

    to_release = add_command("to-release", "DATA_ROOT/PIC -> the release's CSV layout", """\
Our layout in DATA_ROOT/PIC -> the release's layout. Training users: prior/<user>_train.csv and
_val.csv (--val-fraction of their images held out, as pre-training and the prior hold them out),
their images in pretrain/<user>/. Test users: finetune/<N>/train/<user>_train.csv = N images to
fine-tune on, finetune/<N>/val/<user>_val.csv = the held-out test images: the same for every N,
and the same images finetune_PIC.py's embedding variant reports on. A test user's other images
(beyond the largest N; at least one, kept for validation) are in no file.""")
    to_release.add_argument("data_root", metavar="DATA_ROOT", help="data root holding PIC/")
    to_release.add_argument("--out", metavar="RELEASE_DIR",
                            help="folder to write (default: DATA_ROOT/PIC_release, where the official variant reads)")
    to_release.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20], metavar="N",
                            help="the fine-tuning set sizes N (default: 5 10 20)")
    to_release.add_argument("--val-fraction", type=float, default=config_PIC.Config.val_fraction, metavar="F",
                            help="share of a training user's images in _val.csv (default: the config's "
                                 f"val_fraction, {config_PIC.Config.val_fraction})")
    to_release.add_argument("--test-fraction", type=float, default=config_PIC.Config.user_test_fraction,
                            metavar="F",
                            help="share of a test user's images held out for testing (default: the config's "
                                 f"user_test_fraction, {config_PIC.Config.user_test_fraction})")
    to_release.add_argument("--seed", type=int, default=config_PIC.Config.seed, metavar="N",
                            help=f"seed of the splits (default: the config's seed, {config_PIC.Config.seed})")
    return add_option_aliases(parser)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "ratings":
        summary = convert_ratings_csv(args.csv, args.out, args.images, args.human_boxes, args.test_fraction,
                                      args.seed, args.overwrite)
        print(f"wrote {summary['path']}: {len(summary['train'])} training users, {len(summary['test'])} test users")
        return summary
    if args.command == "from-release":
        if args.positions is not None and args.positions < 1:
            parser.error(f"--positions must be >= 1, got {args.positions}")
        release = load_release_layout(args.release, args.positions)
        path = release_to_json(release, args.out, args.overwrite)
        print(f"wrote {path}: {len(release.train_users)} training users, "
              f"{len({user for by_user in release.finetune.values() for user in by_user})} fine-tuning users")
        return {"path": path}
    if min(args.shots) < 1:
        parser.error(f"--shots must be >= 1, got {args.shots}")
    for option, value in (("--val-fraction", args.val_fraction), ("--test-fraction", args.test_fraction)):
        if not 0 < value < 1:
            parser.error(f"{option} must be between 0 and 1, got {value}")
    cfg = config_PIC.Config(data_root=args.data_root)
    data = load_pic_data(cfg)
    out_dir = args.out or cfg.PIC_release
    write_release_layout(data, out_dir, sorted(set(args.shots)), args.val_fraction, args.test_fraction, args.seed,
                         args.overwrite)
    print(f"wrote {out_dir}: {len(data.train_users)} training users, {len(data.test_users)} test users with "
          f"{', '.join(map(str, sorted(set(args.shots))))}-shot splits")
    return {"path": out_dir}


if __name__ == "__main__":
    raise SystemExit(run_script(main))
