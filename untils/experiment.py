"""Starting, resuming and ending a training experiment: the scripts' options, the experiment folder
and its lock, the process group, and how a run ends (a diverged loss, Ctrl-C, a full disk).

Its one rule: a run writes only inside an experiment folder this project made, and ends with one
line saying what happened and how to go on.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from untils.atomic import write_json_atomic
from untils.checkpoint import build_config, config_to_dict, read_checkpoint, stored_options
from untils.cli import add_debug_option, add_demo_options, add_option_aliases
from untils.config import add_config_arguments, given_config_options
from untils.runtime import resolve_device, seed_everything
from untils.training import Trainer, TrainingDiverged, init_distributed, resume_hint


class ExperimentLock:
    """An exclusive lock on an experiment folder: a second run there (two trainings, two resumes of
    one ``last.pth``) is refused instead of racing the first one's files."""

    def __init__(self, exp_path: str) -> None:
        self.path = os.path.join(exp_path, ".lock")
        self.stream = open(self.path, "a")
        try:
            fcntl.flock(self.stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.stream.close()
            raise SystemExit(
                f"error: another run is using the experiment folder {exp_path}; "
                "wait for it to finish or train in another folder"
            ) from None

    def release(self) -> None:
        fcntl.flock(self.stream, fcntl.LOCK_UN)
        self.stream.close()


def build_parser(
    description: str,
    config_cls: type,
    presets: dict[str, tuple[str, dict]] | None = None,
    with_demo: bool = False,
    exclude: Sequence[str] = (),
    demo_help: str = "generate a small human-centric dataset from photos shipped in pip packages and "
    "train on it on the CPU (exercises the pipeline; not a result of the paper)",
) -> argparse.ArgumentParser:
    """The training scripts' options: presets, resume, ``--demo`` (``with_demo``, ``demo_help`` its
    help), and every field of ``config_cls`` but ``exclude``."""
    presets = presets or {}
    epilog = (
        (
            "presets (--preset NAME; explicit options win over the preset):\n"
            + "\n".join(f"  {name:14s} {text}" for name, (text, _) in presets.items())
        )
        if presets
        else None
    )
    parser = argparse.ArgumentParser(
        usage="%(prog)s "
        + ("[--demo | --preset NAME | --resume PATH]" if presets else "[--resume PATH]")
        + " [config options]",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
    )
    if with_demo:
        add_demo_options(parser, demo_help)
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), help="an ablation row of the paper (see below)")
    parser.add_argument(
        "--resume",
        metavar="PATH",
        help="continue from a last.pth training checkpoint, in the experiment folder it is in "
        "(EXPERIMENT/checkpoints/last.pth beside EXPERIMENT/config.json; a last.pth "
        "elsewhere is refused)",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="--resume from a file that holds more than tensors and plain data (UNSAFE: such a file "
        "can run code; only for files you made yourself with an older version)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_option(parser)
    add_config_arguments(parser, config_cls, exclude)
    return add_option_aliases(parser)


TrainerT = TypeVar("TrainerT", bound=Trainer)
TrainerFactory = Callable[[Any, str, torch.device, bool], TrainerT]  # (cfg, exp_path, device, progress)


def experiment_of_checkpoint(path: str, checkpoint: dict) -> str:
    """The experiment folder that the training checkpoint ``path`` belongs to, where resuming writes
    (config.json, results.csv, checkpoints/): ``<experiment>/checkpoints/last.pth`` beside the
    experiment's config.json of the same run (its ``exp_name``). Anything else (a last.pth
    downloaded or copied alone) is refused with one line, before anything is written."""
    checkpoint_dir = os.path.dirname(os.path.abspath(path))
    exp_path = os.path.dirname(checkpoint_dir)
    config_path = os.path.join(exp_path, "config.json")
    problem: str | None
    if os.path.basename(checkpoint_dir) != "checkpoints" or not os.path.isfile(config_path):
        problem = "it is not in the checkpoints/ folder of an experiment folder with its config.json"
    else:
        try:
            with open(config_path) as stream:
                config = json.load(stream)
        except (OSError, UnicodeDecodeError, ValueError):
            config = None
        run = checkpoint.get("config", {}).get("exp_name")
        same_run = isinstance(config, dict) and run is not None and config.get("exp_name") == run
        problem = None if same_run else f"{config_path} is not the config of the run that saved it"
    if problem:
        raise SystemExit(
            f"error: --resume {path}: {problem}; resuming writes into the experiment folder, so it "
            "continues only inside the one this project's training made (move the whole folder)"
        )
    return exp_path


def launch(
    build_trainer: TrainerFactory[TrainerT],
    config_cls: type,
    args: argparse.Namespace,
    presets: dict[str, tuple[str, dict]] | None = None,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> TrainerT:
    """Start (or ``--resume``) an experiment and train it. A diverged loss, Ctrl-C (exit status 130)
    and a checkpoint that cannot be written (a full disk) end with one line saying how to go on.

    ``build_trainer(cfg, exp_path, device, progress)`` builds the model (after the seed is set, so
    its initial weights depend on ``cfg.seed`` alone), the datasets and the trainer.
    """
    # torch's thread count is left as it is: results depend on it, and a resumed run must reproduce the
    # uninterrupted one (DataLoader workers, which do not change results, follow the free CPUs)
    given = given_config_options(args)
    rank, world, local_rank = init_distributed()
    checkpoint = None
    if args.resume:
        checkpoint = read_checkpoint(args.resume, trusted=args.trust_checkpoint)
        if "optimizer" not in checkpoint:
            raise SystemExit(f"{args.resume} holds model weights only; --resume needs a last.pth training checkpoint")
        exp_path = experiment_of_checkpoint(args.resume, checkpoint)
        moved = sorted({"exp_root", "exp_name"} & set(given))
        if moved:
            raise SystemExit(f"error: --{moved[0]} cannot change on --resume: the run continues in {exp_path}")
        cfg = build_config(config_cls, {**stored_options(checkpoint, config_cls, args.resume), **given}, args.resume)
    else:
        options = dict(presets[args.preset][1]) if presets and getattr(args, "preset", None) else {}
        options.update(given)
        if prepare is not None:
            options = prepare(options)
        cfg = config_cls(**options)
        created = cfg.create_experiment_dir() if rank == 0 else None
        if world > 1:
            shared = [created]
            dist.broadcast_object_list(shared, src=0)
            created = shared[0]
        if not isinstance(created, str):
            raise RuntimeError(f"rank {rank}: rank 0 did not share the experiment folder (got {created!r})")
        exp_path = created
    lock = ExperimentLock(exp_path) if rank == 0 else None
    try:
        return _train(build_trainer, cfg, exp_path, checkpoint, args, rank, world, local_rank)
    except _StartFailed as failed:
        if rank == 0 and checkpoint is None:
            shutil.rmtree(exp_path, ignore_errors=True)  # this run made it, and nothing was trained in it
        if isinstance(failed.error, KeyboardInterrupt):
            hint = "nothing was trained" if checkpoint is None else resume_hint(os.path.join(exp_path, "checkpoints"))
            raise _interrupted(rank, f"interrupted before training started; {hint}") from None
        raise failed.error from None
    finally:
        if lock is not None:
            lock.release()


def _interrupted(rank: int, message: str) -> SystemExit:
    """Ctrl-C: one line (from the first process) instead of a traceback, and the shell's status 130."""
    if rank == 0:
        print(message, file=sys.stderr, flush=True)
    return SystemExit(130)


class _StartFailed(Exception):
    """The model, data or trainer could not be built: nothing was trained."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _train(
    build_trainer: TrainerFactory[TrainerT],
    cfg,
    exp_path: str,
    checkpoint: dict | None,
    args: argparse.Namespace,
    rank: int,
    world: int,
    local_rank: int,
) -> TrainerT:
    try:
        device = resolve_device(cfg.device, cfg.gpu_id)
        if world > 1 and device.type == "cuda":
            device = torch.device(f"cuda:{local_rank}")
            torch.cuda.set_device(device)
        if rank == 0:
            write_json_atomic(os.path.join(exp_path, "config.json"), config_to_dict(cfg), indent=2)
            print(f"experiment {exp_path} on {device}" + (f" x {world} processes" if world > 1 else ""), flush=True)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # inputs come in a few sizes: each is tuned once
        seed_everything(cfg.seed)
        trainer = build_trainer(cfg, exp_path, device, not args.no_progress)
        if checkpoint is not None:
            trainer.restore(checkpoint)
    except (Exception, KeyboardInterrupt) as error:
        raise _StartFailed(error) from error
    try:
        trainer.run()
    except BaseException as error:
        if world > 1 and dist.is_initialized():
            shut_down_distributed(trainer, wait_for_other_ranks=False)  # another may be inside a collective
        if isinstance(error, TrainingDiverged):
            trainer.writer.close()
            raise SystemExit(f"training stopped: {error}") from None
        if isinstance(error, KeyboardInterrupt):
            trainer.writer.close()
            raise _interrupted(
                rank,
                f"interrupted at epoch {trainer.epoch + 1}, step {trainer.step}; {resume_hint(trainer.checkpoint_dir)}",
            ) from None
        raise
    if world > 1:
        shut_down_distributed(trainer)
    return trainer


def shut_down_distributed(trainer: Trainer, wait_for_other_ranks: bool = True, settle_s: float = 0.2) -> None:
    """Tear the process group down (once every rank is done with it, unless told not to wait).

    gloo's worker threads free each finished collective's tensors after the caller has moved on,
    and need the GIL for it. The DistributedDataParallel wrapper's destructor, when it drops the
    last reference to the group, joins those threads while holding the GIL: if one of them was
    still freeing tensors, the process hung for good (3 of about 50 two-process runs). Sleeping
    (without the GIL) lets them finish before the wrapper and the group are freed here.
    """
    if wait_for_other_ranks:
        dist.barrier()
    time.sleep(settle_s)
    dist.destroy_process_group()
    trainer.model = trainer.core
