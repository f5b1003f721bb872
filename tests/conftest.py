"""Shared fixtures: the read-only data in ../shared/data.

Tests that need it skip on a developer's machine without it, and fail under CI
(``CI=true``), where a missing folder means a broken checkout, not a choice.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("HCIC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_shared(relative: str = "") -> Path:
    """Return ``SHARED_DATA/relative``; skip (or fail under CI) when it is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"shared test data not found: {path}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared()
