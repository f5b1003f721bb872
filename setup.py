"""Builds the RoIAlign / RoDAlign kernels: ``roi_align._C`` and ``rod_align._C``.

CPU kernels always; CUDA kernels too when the installed torch has CUDA, a toolkit is found
(CUDA_HOME) and a GPU is visible, or when FORCE_CUDA=1 asks for them (an error without a toolkit).
Build against the installed torch:
``pip install --no-build-isolation -e .`` or ``python setup.py build_ext --inplace``.
"""

from __future__ import annotations

import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

from untils.commands import COMMANDS

ROOT = os.path.dirname(os.path.abspath(__file__))
# Headers shared by both ops live with roi_align.
SHARED_CSRC = os.path.join(ROOT, "roi_align", "csrc")
CSRC_PATTERNS = ["csrc/*.h", "csrc/*.cuh", "csrc/*.cpp", "csrc/*.cu"]

# -ffp-contract=off / --fmad=false: no fused multiply-adds, so float32 positions round
# step by step exactly as in the original kernels.
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]
NVCC_FLAGS = ["-O3", "--fmad=false"]


def build_cuda() -> bool:
    """CUDA kernels when a GPU is visible or FORCE_CUDA=1 asks for them (torchvision's rule).

    A CUDA build of torch on a machine without a GPU (the pinned install on a CPU-only machine)
    builds only the CPU kernels, quickly; set FORCE_CUDA=1 to compile the CUDA ones there too.
    """
    toolkit = torch.version.cuda is not None and CUDA_HOME is not None
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if not toolkit:
            raise RuntimeError(
                f"FORCE_CUDA=1 needs a CUDA build of torch and a CUDA toolkit; found torch {torch.__version__} "
                f"(CUDA {torch.version.cuda}) and CUDA_HOME={CUDA_HOME}"
            )
        return True
    return toolkit and torch.cuda.is_available()


def align_extension(package: str, with_cuda: bool):
    sources = [f"{package}/csrc/{package}.cpp"]
    include_dirs = [SHARED_CSRC, os.path.join(ROOT, package, "csrc")]
    if with_cuda:
        return CUDAExtension(
            f"{package}._C",
            sources + [f"{package}/csrc/{package}_cuda.cu"],
            include_dirs=include_dirs,
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension(
        f"{package}._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=["-fopenmp"],
    )


WITH_CUDA = build_cuda()

# The top-level modules (library and scripts, as the releases lay them out) are installed as they are;
# untils/commands.py runs the scripts as the hcic-* commands.
MODULES = sorted(os.path.splitext(name)[0] for name in os.listdir(ROOT) if name.endswith(".py") and name != "setup.py")

setup(
    name="human-centric-cropping",
    version="1.1.0",
    description="Human-centric, GAIC and personalized image cropping, with RoIAlign / RoDAlign operators",
    py_modules=MODULES,
    packages=["untils", "roi_align", "roi_align.modules", "rod_align", "rod_align.modules"],
    entry_points={"console_scripts": [f"{command}=untils.commands:main" for command in COMMANDS]},
    package_data={"roi_align": CSRC_PATTERNS, "rod_align": CSRC_PATTERNS, "untils": ["web_static/*"]},
    python_requires=">=3.10",
    ext_modules=[align_extension("roi_align", WITH_CUDA), align_extension("rod_align", WITH_CUDA)],
    cmdclass={"build_ext": BuildExtension},
)
