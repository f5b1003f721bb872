"""A local web page for cropping: upload photos, see the ranked crops and why, download them.

  python app.py --checkpoint experiments/GAICD_PA_CP/checkpoints/best-srcc.pth
  python app.py --demo                   # no checkpoint, no network: the demo model of train_on_GAICD.py --demo
  python app.py --checkpoint best.pth --port 8080 --data-dir /tmp/crops
  python app.py --checkpoint best.pth --pic-prior prior.pth   # users rate crops and get their own model

Serves http://127.0.0.1:8000/ (loopback only unless --host names another interface): drop photos,
choose ratios, top-k and the person (detected, drawn or none), see the ranked crops on the photo
with their scores, the content heat map and the person box, download a crop, all crops as a zip,
or the JSON. With a PIC prior (--pic-prior, or --demo's), a user also rates the crops the
personal model scores, presses "Personalize" to fine-tune their own model in the background, and
then sees their ranking beside the generic one. The page's JSON API (/api/health, /api/crop,
/api/photos/ID/crops/RATIO/RANK, /api/ratings, /api/personalize, /api/jobs/ID) is described in
README.md ("The web page"). Uploads are kept in --data-dir, at most --max-photos of them (the oldest
are removed); ratings and users' models are kept there too. Every option also takes underscores
(--data_dir).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from cropping_model import load_crop_model
from pic_model import MIN_RATED_CROPS, MIN_RATED_PHOTOS, load_pic_ranker, personalize_from_ratings
from untils.cli import add_option_aliases, run_script
from untils.crop_worker import CropWorker
from untils.cropper import Cropper
from untils.person_detection import add_detector_options, build_person_detector
from untils.photo_store import PhotoStore
from untils.photos import DEFAULT_MAX_PIXELS
from untils.pic_demo import demo_prior_checkpoint, demo_prior_commands
from untils.runtime import configure_threads, resolve_device
from untils.user_models import Personalization

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def demo_checkpoint(demo_dir: str) -> str:
    """Where ``train_on_GAICD.py --demo --demo-dir DIR`` writes its best model."""
    return os.path.join(demo_dir, "experiments", "demo", "checkpoints", "best-srcc.pth")


def train_if_absent(checkpoint: str, commands: Sequence[Sequence[str]], what: str) -> str:
    """``checkpoint``, made first by running ``commands`` (their output on stderr) when absent."""
    if os.path.isfile(checkpoint):
        return checkpoint
    print(f"no {what} at {checkpoint}: training it first ...", file=sys.stderr, flush=True)
    for command in commands:
        if subprocess.run(list(command), stdout=sys.stderr).returncode != 0:
            raise RuntimeError(f"training the {what} failed ({' '.join(command)}); see its output above")
    if not os.path.isfile(checkpoint):
        raise RuntimeError(f"training the {what} wrote no {checkpoint}; see the output above")
    return checkpoint


def train_demo_model(demo_dir: str) -> str:
    """The demo model, trained first (train_on_GAICD.py --demo, about a minute on a CPU) when absent."""
    script = Path(__file__).resolve().parent / "train_on_GAICD.py"
    command = [sys.executable, str(script), "--demo", "--demo-dir", demo_dir, "--no-progress"]
    return train_if_absent(demo_checkpoint(demo_dir), [command], "demo model")


def build_personalization(prior: str, device: str) -> Personalization:
    """Rating and personalizing in the page, from the PIC prior ``prior`` (loaded now, so a bad file
    stops the server before it serves)."""
    load_pic_ranker(prior, device)
    return Personalization(
        prior, partial(load_pic_ranker, device=device), personalize_from_ratings, MIN_RATED_PHOTOS, MIN_RATED_CROPS
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="trained model: ours (train_on_GAICD.py) or an official release's")
    model.add_argument(
        "--demo",
        action="store_true",
        help="use the demo model of train_on_GAICD.py --demo (trained first when absent; "
        "no network needed: the person detector then never downloads)",
    )
    parser.add_argument(
        "--demo-dir",
        default="demo_runs",
        help="where the demo's data and model are (train_on_GAICD.py --demo-dir; default demo_runs)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to serve on (default 127.0.0.1, this machine only; 0.0.0.0 serves every "
        "network the machine is on, with no login)",
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--data-dir", default="app_data", help="folder for uploads and their crops (default app_data)")
    parser.add_argument(
        "--max-photos",
        type=int,
        default=200,
        help="photos kept in --data-dir; the oldest are removed beyond it (default 200)",
    )
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload in MB (default 50)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"photos with more pixels are refused (default {DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument(
        "--pic-prior",
        metavar="CKPT",
        help="PIC prior checkpoint (prior_PIC.py): users rate crops in the page and get their own model "
        "fine-tuned from it (with --demo, default: the demo prior, trained first when absent)",
    )
    parser.add_argument("--user", metavar="ID", help="score as this user of a personalized checkpoint (crop.py --user)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="most waiting requests the model thread takes from the queue at once (default 8)",
    )
    parser.add_argument(
        "--photos-per-batch",
        type=int,
        default=1,
        help="photos per forward pass among those requests (default 1: a photo then gets the same "
        "scores whoever else is waiting; more threads split a batched pass differently, which "
        "moves scores in their last bits)",
    )
    parser.add_argument("--no-detector", action="store_true", help="serve without person detection")
    add_detector_options(parser)
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load a checkpoint that holds more than tensors and plain data (UNSAFE)",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return add_option_aliases(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (
        not (0 < args.port < 65536)
        or args.max_upload_mb <= 0
        or min(args.max_pixels, args.max_photos, args.photos_per_batch, args.max_batch) < 1
    ):
        raise ValueError(
            "--port must be 1-65535, --max-upload-mb positive, and --max-pixels, --max-photos, "
            "--photos-per-batch, --max-batch at least 1"
        )
    import uvicorn  # the server stack is needed only once the options are good

    from untils.jobs import JobRunner
    from untils.personal_routes import PersonalService
    from untils.ratings_store import RatingsStore
    from untils.user_models import UserModels
    from untils.webapp import ServerLimits, create_app

    checkpoint = train_demo_model(args.demo_dir) if args.demo else args.checkpoint
    prior = args.pic_prior
    if prior is None and args.demo:
        commands = demo_prior_commands(args.demo_dir, sys.executable)
        prior = train_if_absent(demo_prior_checkpoint(args.demo_dir), commands, "demo PIC prior")
    configure_threads()  # one worker thread scores; more torch threads than free CPUs only contend
    device = resolve_device(args.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        cropper = Cropper(
            load_crop_model(checkpoint, device, trusted=args.trust_checkpoint), checkpoint=checkpoint, user=args.user
        )
        detector = (
            None
            if args.no_detector
            else build_person_detector(
                args.detector_weights, args.detector_arch, allow_download=not (args.no_download or args.demo)
            )
        )
    for warning in caught:
        print(f"note: {warning.message}", file=sys.stderr)
    worker = CropWorker(cropper, detector, max_jobs=args.max_batch, photos_per_batch=args.photos_per_batch)
    store = PhotoStore(args.data_dir, args.max_photos)
    limits = ServerLimits(int(args.max_upload_mb * 2**20), args.max_pixels)
    personal, jobs = None, None
    if prior is not None:
        personalization = build_personalization(prior, str(device))
        ratings = RatingsStore(args.data_dir)
        jobs = JobRunner(personalization.personalize)
        personal = PersonalService(ratings, UserModels(personalization, ratings), jobs, store, args.max_pixels)
    if args.host not in LOOPBACK:
        print(
            f"WARNING: serving on {args.host}: anyone who can reach this machine can use the page (no login)",
            file=sys.stderr,
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"serving {checkpoint} on http://{host}:{args.port}/ (uploads in {args.data_dir}/; Ctrl+C stops)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(create_app(worker, store, limits, personal), host=args.host, port=args.port, log_level="warning")
    worker.close()
    if jobs is not None:
        jobs.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
