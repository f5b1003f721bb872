"""crop.py: crop your own photos with any checkpoint ``cropping_model.load_crop_model`` knows; the
command line over the crop library (``untils.cropper``). README.md ("Crop your own photos") is its manual.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path

import torch
from tqdm import tqdm

from config_GAICD import BACKBONES, PRECISIONS, Config
from cropping_model import build_crop_model, load_crop_model
from untils import cropper as crop_library
from untils.background_writes import BackgroundWrites
from untils.boxes import box_from_text
from untils.candidates import (
    DEFAULT_RATIO_CANDIDATES,
    RATIO_CANDIDATE_GRIDS,
    most_ratio_candidates,
    parse_aspect_ratio,
)
from untils.checkpoint import CheckpointError, read_checkpoint
from untils.cli import add_option_aliases
from untils.config import parse_bool
from untils.crop_candidates import ratio_tag, requested_ratios
from untils.crop_outputs import write_outputs
from untils.cropper import UNTRAINED_WARNING, CropResult, NonFiniteScoresError, PhotoFailure
from untils.folder_lock import FolderLock, FolderLockedError
from untils.person_detection import PersonDetector, add_detector_options, build_person_detector
from untils.photos import (
    DEFAULT_MAX_PIXELS,
    OutputWriteError,
    PhotoError,
    list_photos,
    plan_outputs,
    read_human_boxes_file,
)
from untils.runtime import configure_threads, default_workers, resolve_device

DESCRIPTION = """Crop your own photos with a trained crop-scoring model (human-centric, GAIC or PIC).

  python crop.py photo.jpg --checkpoint experiments/GAICD_PA_CP/checkpoints/best-srcc.pth
  python crop.py holidays/ --checkpoint best.pth --aspect-ratio 4:3 --top-k 3 --detect-human --visualize
  python crop.py portrait.png --checkpoint best.pth --human-box 120,40,380,512
  python crop.py shoot/ --checkpoint best.pth --aspect-ratio any 1:1 4:5 16:9 9:16 --keep-person \
      --detect-human --xmp --no-pixels
  torchrun --nproc-per-node 4 crop.py shoot/ --checkpoint best.pth --out crops/   # one share per GPU

Candidates are the GAIC grid (free ratio) or, with --aspect-ratio W:H, crops of exactly that ratio;
several ratios are ranked from one pass over each photo. Each model ranks them on the photo prepared
as it was trained (GAIC's and PIC's release models among their own candidates). Per photo, in --out:
NAME_RATIO_crop1.EXT ... (the top-k crops of each ratio at full resolution; RATIO: any, 16x9...),
with --visualize NAME_RATIO_visualization.png, with --xmp NAME.xmp (the first ratio's best crop for
Lightroom and darktable), and NAME.json (written last: every candidate ranked per ratio, the person).
Every option also takes underscores (--top_k). Exit status: 0 when every photo was cropped or
skipped, 1 when some failed or there was nothing to crop, 2 on a setup error. README.md ("Crop your
own photos") tells the rest.
"""
# Threads that encode and write finished photos' outputs while the model scores the next photos.
OUTPUT_WRITERS = 2
NO_CHECKPOINT_MESSAGE = (
    "crop.py needs a trained checkpoint: --checkpoint PATH.\n"
    "  * train one: python train_on_GAICD.py (the paper's recipe, needs GAICD), or\n"
    "    python train_on_GAICD.py --demo (generated data, on the CPU; writes\n"
    "    demo_runs/experiments/demo/checkpoints/best-srcc.pth);\n"
    "  * or use the official release's checkpoint (a bare state_dict): our loader, as test.py's, accepts it.\n"
    "To try the tool without one, add --allow-untrained: a random-weight model whose crops mean nothing."
)


class MissingCheckpointError(RuntimeError):
    """No checkpoint was given and an untrained model was not allowed."""


class Cropper(crop_library.Cropper):
    """The crop library's :class:`untils.cropper.Cropper` for a checkpoint file.

    ``Cropper("best.pth").crop("photo.jpg", top_k=3)`` gives ``[((x1, y1, x2, y2), score), ...]``.
    ``checkpoint`` is ours (with its config) or a release's bare state_dict. Without one,
    ``allow_untrained=True`` builds a random-weight human-centric model on ``backbone`` (for trying
    the tool and timing it; its crops mean nothing). ``trust_checkpoint`` loads a file that needs
    more than tensors and plain data (unsafe). The other options are the library Cropper's.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        device: str = "auto",
        *,
        detector: PersonDetector | None = None,
        allow_untrained: bool = False,
        backbone: str = "vgg16",
        user: str | None = None,
        precision: str = "fp32",
        channels_last: bool = False,
        trust_checkpoint: bool = False,
        channel_order: str | None = None,
        ratio_candidates: str = DEFAULT_RATIO_CANDIDATES,
    ) -> None:
        target = resolve_device(device)
        if checkpoint is None:
            if not allow_untrained:
                raise MissingCheckpointError(NO_CHECKPOINT_MESSAGE)
            model = build_crop_model(Config(backbone=backbone, pretrained=False), "HCIC").to(target).eval()
        else:
            content = read_checkpoint(checkpoint, trusted=trust_checkpoint)
            try:
                model = load_crop_model(content, target, channel_order=channel_order)
            except CheckpointError as error:
                raise CheckpointError(f"{checkpoint}: {error}") from None
        super().__init__(
            model,
            checkpoint=checkpoint,
            untrained=checkpoint is None,
            detector=detector,
            user=user,
            precision=precision,
            channels_last=channels_last,
            ratio_candidates=ratio_candidates,
        )


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _aspect_argument(text: str) -> str:
    try:
        parse_aspect_ratio(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _box_argument(text: str) -> tuple[float, float, float, float]:
    box = box_from_text(text)
    if box is None:
        raise argparse.ArgumentTypeError(f"--human-box {text!r}: expected four numbers x1,y1,x2,y2")
    return box


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="+", metavar="PHOTO_OR_FOLDER", help="photos, or folders of photos")
    parser.add_argument("--checkpoint", help="trained model: ours (train_on_GAICD.py) or the official release's")
    parser.add_argument(
        "--user",
        metavar="ID",
        help="score crops the way this user likes: needs a personalized "
        "checkpoint (prior_PIC.py: its training users; finetune_PIC.py: users/ID.pth, the only "
        "choice for the official variant)",
    )
    parser.add_argument(
        "--aspect-ratio",
        nargs="+",
        default=["any"],
        type=_aspect_argument,
        metavar="RATIO",
        help="one or more of: any (the GAIC grid), W:H such as 1:1, 4:3, 3:4, 16:9, or a number w/h; "
        "all ranked from one pass over each photo, reported in that order; an official PIC "
        "checkpoint takes only any (its fixed views)",
    )
    fast_scales, fast_steps = RATIO_CANDIDATE_GRIDS["fast"]
    dense_scales, dense_steps = RATIO_CANDIDATE_GRIDS["dense"]
    parser.add_argument(
        "--ratio-candidates",
        choices=tuple(RATIO_CANDIDATE_GRIDS),
        default=DEFAULT_RATIO_CANDIDATES,
        help=f"the crops a fixed ratio (W:H) ranks: dense, {len(dense_scales)} scales x {dense_steps}x{dense_steps} "
        f"positions (up to {most_ratio_candidates('dense')} crops), or fast, {len(fast_scales)} scales x "
        f"{fast_steps}x{fast_steps} (up to {most_ratio_candidates('fast')}: quicker with several ratios, "
        f"BENCHMARKS.md); any's GAIC grid is the same in both (default {DEFAULT_RATIO_CANDIDATES})",
    )
    parser.add_argument("--top-k", type=int, default=3, help="crops saved per photo and ratio (default 3)")
    parser.add_argument(
        "--keep-person",
        action="store_true",
        help="rank only crops that contain the person's whole box (and every detected face); a "
        "ratio where none does says so in the JSON instead of cutting the person",
    )
    parser.add_argument(
        "--xmp",
        action="store_true",
        help="also write NAME.xmp: the first ratio's best crop as Camera Raw crop settings "
        "(Lightroom, darktable), the original photo untouched",
    )
    parser.add_argument("--no-pixels", action="store_true", help="write only the JSON (and --xmp sidecars), no crops")
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="crop only share I (0 to N-1) of the sorted photos, for N processes or machines; "
        "under torchrun RANK/WORLD_SIZE give it (and LOCAL_RANK the GPU)",
    )
    person = parser.add_mutually_exclusive_group()
    person.add_argument(
        "--human-box",
        type=_box_argument,
        metavar="X1,Y1,X2,Y2",
        help="the person, in pixels of the upright photo (for every photo given)",
    )
    person.add_argument("--human-boxes", metavar="JSON", help="a JSON file {file name or stem: [x1, y1, x2, y2]}")
    person.add_argument("--detect-human", action="store_true", help="find the person (see above)")
    add_detector_options(parser, needs="with --detect-human: ")
    parser.add_argument("--out", default="crops", help="output folder (default crops/)")
    parser.add_argument("--visualize", action="store_true", help="also write NAME_visualization.png")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--photos-per-batch", type=int, default=4, help="photos scored together (default 4)")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="forward pass in fp32 (default), or autocast to bf16/fp16: faster on GPUs and on "
        "CPUs with AVX512-BF16/AMX; the ranking can change where scores are within rounding",
    )
    parser.add_argument(
        "--channels-last",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="channels-last convolutions (faster on GPUs and with oneDNN on CPUs); alone or with true/false",
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=default_workers(limit=2),
        help="DataLoader workers decoding photos (0: in this process; default: the free CPUs but one, at most 2)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="photos with more pixels are refused undecoded, like unreadable ones (default "
        f"{DEFAULT_MAX_PIXELS:,}, Pillow's decompression-bomb limit)",
    )
    parser.add_argument(
        "--allow-untrained",
        action="store_true",
        help="without --checkpoint, use a random-weight model (its crops mean nothing)",
    )
    parser.add_argument(
        "--untrained-backbone", default="vgg16", choices=BACKBONES, help="backbone of the --allow-untrained model"
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load a checkpoint that holds more than tensors and plain data (UNSAFE: such a file "
        "can run code; only for files you made yourself with an older version)",
    )
    parser.add_argument(
        "--channel-order",
        choices=("rgb", "bgr"),
        help="channel order the model sees (default: the model's own: bgr for PIC's release files, "
        "whose release trained on cv2's BGR photos; rgb otherwise)",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    return add_option_aliases(parser, renamed={"--batch-size": "--photos-per-batch", "--workers": "--num-workers"})


def shard_of(text: str | None, environ: Mapping[str, str]) -> tuple[int, int]:
    """``(I, N)`` from ``--shard I/N``, else from torchrun's RANK and WORLD_SIZE, else ``(0, 1)``;
    ValueError for a bad value or when both are given and disagree."""
    from_env = None
    if "WORLD_SIZE" in environ and "RANK" in environ:
        from_env = (int(environ["RANK"]), int(environ["WORLD_SIZE"]))
    if text is None:
        shard = from_env or (0, 1)
    else:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/2") from None
        shard = (index, count)
        if from_env is not None and from_env != shard:
            raise ValueError(f"--shard {text} disagrees with torchrun's RANK/WORLD_SIZE ({from_env[0]}/{from_env[1]})")
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard {shard[0]}/{shard[1]}: expected 0 <= I < N")
    return shard


def shard_photos(photos: Sequence[Path], shard: tuple[int, int]) -> list[Path]:
    """Shard I of N of the photos sorted by path: every I-th of N, so N shards cover them once."""
    return sorted(photos, key=str)[shard[0] :: shard[1]]


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns 0 when every photo was cropped or skipped, 1 when some failed or none was
    found, 2 on a setup error. Every error is one ``error:`` line; ``--debug`` shows tracebacks."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except Exception as error:  # anything unforeseen: still one line, the traceback only when asked
        if args.debug:
            raise
        return _error(f"{type(error).__name__}: {error} (--debug shows where)")


def _run(args: argparse.Namespace) -> int:
    if args.top_k < 1 or args.photos_per_batch < 1 or args.num_workers < 0 or args.max_pixels < 1:
        return _error("--top-k, --photos-per-batch and --max-pixels must be >= 1 and --num-workers >= 0")
    if (args.detector_weights or args.no_download) and not args.detect_human:
        return _error("--detector-weights and --no-download need --detect-human")
    if args.no_pixels and args.visualize:
        return _error("--no-pixels writes no images: drop --visualize")
    try:
        ratios = requested_ratios(args.aspect_ratio)
        shard = shard_of(args.shard, os.environ)
    except ValueError as error:
        return _error(str(error))
    if args.device == "auto" and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        args.device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"  # this process's GPU
    if not args.checkpoint and not args.allow_untrained:
        return _error(NO_CHECKPOINT_MESSAGE)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        return _error(f"--out {out_dir}: is an existing file, not a folder")
    listing = list_photos(args.photos)
    configure_threads()  # no more torch threads than free CPUs: on a busy machine extra ones only contend
    for note in listing.notes if shard[0] == 0 else []:
        print(note, file=sys.stderr)
    if not listing.photos and not listing.failures:
        return _error(f"no photo to crop in {', '.join(args.photos)}", code=1)
    inputs, photos = listing.photos, shard_photos(listing.photos, shard)
    if shard[0] != 0:
        listing.failures = []  # inputs that cannot be listed are reported once, by shard 0
    try:
        file_boxes = read_human_boxes_file(args.human_boxes) if args.human_boxes else None
        with warnings.catch_warnings(record=True) as caught:  # said below, as notes
            warnings.simplefilter("default")
            detector = (
                build_person_detector(args.detector_weights, args.detector_arch, allow_download=not args.no_download)
                if args.detect_human
                else None
            )
            cropper = Cropper(
                args.checkpoint,
                args.device,
                detector=detector,
                allow_untrained=args.allow_untrained,
                backbone=args.untrained_backbone,
                user=args.user,
                precision=args.precision,
                channels_last=args.channels_last,
                trust_checkpoint=args.trust_checkpoint,
                channel_order=args.channel_order,
                ratio_candidates=args.ratio_candidates,
            )
        for text, _ in ratios:
            cropper.candidates(text)  # a ratio its candidates cannot give fails here, not per photo
    except (ValueError, RuntimeError) as error:  # bad file, checkpoint (CheckpointError), detector, device
        print(f"error: {error}", file=sys.stderr)
        if isinstance(error, CheckpointError) and not os.path.exists(args.checkpoint):
            print(NO_CHECKPOINT_MESSAGE, file=sys.stderr)
        return 2
    for warning in caught:
        text = str(warning.message)
        print(f"WARNING: {text}" if text == UNTRAINED_WARNING else f"note: {text}", file=sys.stderr)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return _error(f"--out {out_dir}: cannot make the folder ({error.strerror or error})")
    try:
        with FolderLock(out_dir, shard):
            return _crop(args, cropper, photos, inputs, listing.failures, file_boxes, ratios, shard)
    except FolderLockedError as error:
        return _error(str(error))
    except NonFiniteScoresError as error:
        return _error(str(error))


def _crop(
    args: argparse.Namespace,
    cropper: Cropper,
    photos: list[Path],
    inputs: list[Path],
    failures: list[str],
    file_boxes: dict | None,
    ratios: list[tuple[str, float | None]],
    shard: tuple[int, int],
) -> int:
    out_dir = Path(args.out)
    tags = [ratio_tag(text) for text, _ in ratios]
    plan = plan_outputs(
        photos,
        out_dir,
        tags,
        args.top_k,
        args.visualize,
        args.overwrite,
        args.max_pixels,
        pixels=not args.no_pixels,
        xmp=args.xmp,
        inputs=inputs,
    )
    failures, todo = failures + plan.failures, list(plan.todo)
    boxes = [file_boxes.get(p.name, file_boxes.get(p.stem)) if file_boxes is not None else args.human_box for p in todo]
    for message in plan.skipped:
        print(f"skipped {message}", file=sys.stderr)
    source = "file" if file_boxes is not None else "given"
    if file_boxes is not None:
        missing = [p.name for p, box in zip(todo, boxes, strict=True) if box is None]
        if missing:
            print(
                f"{args.human_boxes} has no box for {len(missing)} photo(s) ({', '.join(missing[:5])}): "
                "cropped without a person",
                file=sys.stderr,
            )

    cropped = 0

    def report(photo: Path, result: CropResult, written: Future) -> None:
        """The outcome of one photo's outputs, in the order the photos were scored."""
        nonlocal cropped
        progress.update(1)
        try:
            written.result()
        except (OSError, PhotoError) as error:
            message = (
                str(error)
                if isinstance(error, (PhotoError, OutputWriteError))
                else f"could not write its outputs ({error})"
            )
            failures.append(f"{photo}: {message}")
            progress.write(f"failed {photo}: {message}", file=sys.stderr)
            return
        cropped += 1
        if result.person.source == "detected" or (args.detect_human and result.person.box is None):
            found = "no person found" if result.person.box is None else f"person at {list(result.person.box)}"
            progress.write(f"{photo.name}: {found}", file=sys.stderr)

    # the crops of scored photos are encoded and written in the background while the model scores
    # the next ones (one thread for figures: matplotlib's font cache is shared)
    writers = 1 if args.visualize else OUTPUT_WRITERS
    with (
        tqdm(total=len(todo), unit="photo", desc="cropping", file=sys.stderr) as progress,
        BackgroundWrites[tuple[Path, CropResult]](writers, max_pending=2 * args.photos_per_batch) as writes,
    ):
        for result in cropper.rank_many(
            [str(p) for p in todo],
            boxes,
            [text for text, _ in ratios],
            keep_person=args.keep_person,
            human_source=source,
            batch_size=args.photos_per_batch,
            num_workers=args.num_workers,
            max_pixels=args.max_pixels,
        ):
            photo = todo[result.index]
            if isinstance(result, PhotoFailure):
                progress.update(1)
                failures.append(f"{photo}: {result.message}")
                progress.write(f"failed {photo}: {result.message}", file=sys.stderr)
                continue
            outputs = (result, photo, plan.todo[photo], cropper, args.top_k, args.max_pixels, plan.stale.get(photo, []))
            for (done_photo, done_result), written in writes.submit((photo, result), write_outputs, *outputs):
                report(done_photo, done_result, written)
        for (done_photo, done_result), written in writes.finish():
            report(done_photo, done_result, written)
    who = f"shard {shard[0]}/{shard[1]} (pid {os.getpid()}): " if shard[1] > 1 else ""
    print(
        f"{who}{cropped} photo(s) cropped into {out_dir}/, {len(plan.skipped)} skipped (outputs exist), "
        f"{len(failures)} failed",
        file=sys.stderr,
    )
    for failure in failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
