"""Console commands (``hcic-crop``, ``hcic-test``, ...) for the top-level scripts, once installed.

Each command runs its script's ``main`` the way ``python <script>.py`` does. The scripts are found
beside the installed library modules and loaded by path under a name of their own, because one of
them (``test.py``) shares its module name with Python's own ``test`` package, which an import would
find first.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

COMMANDS = {
    "hcic-crop": "crop.py",
    "hcic-test": "test.py",
    "hcic-train-gaicd": "train_on_GAICD.py",
    "hcic-train-cpc": "train_on_CPC.py",
    "hcic-heatmaps": "generate_pseudo_heatmap.py",
    "hcic-pic-pretrain": "pretrain_PIC.py",
    "hcic-pic-prior": "prior_PIC.py",
    "hcic-pic-finetune": "finetune_PIC.py",
    "hcic-pic-convert": "convert_PIC_data.py",
    "hcic-app": "app.py",
}


def script_path(file_name: str) -> str:
    """Where an installed script is: in the folder of the library module ``cropping_model``."""
    spec = importlib.util.find_spec("cropping_model")
    if spec is None or spec.origin is None:
        raise SystemExit("error: the project's modules are not installed (pip install --no-build-isolation -e .)")
    return os.path.join(os.path.dirname(spec.origin), file_name)


def load_script(file_name: str) -> ModuleType:
    path = script_path(file_name)
    name = "hcic_" + os.path.splitext(file_name)[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: script {path} not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    """The console command this process was started as (``sys.argv[0]``, e.g. .../bin/hcic-crop) runs
    its script with the command-line arguments, as ``python <script>.py`` would."""
    command = os.path.basename(sys.argv[0])
    if command not in COMMANDS:
        raise SystemExit(f"error: unknown command {command!r}; the commands are {', '.join(COMMANDS)}")
    module = load_script(COMMANDS[command])
    sys.argv[0] = command
    run_script = module.run_script if hasattr(module, "run_script") else None
    result = run_script(module.main) if run_script is not None else module.main()
    raise SystemExit(result if isinstance(result, int) else 0)
