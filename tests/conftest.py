"""Fixtures shared by the training tests (one session root, one compile cache, one reference run)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The session's shared training directory, with XLA's persistent compile cache enabled."""
    from tests import train_support as support

    root = support.session_root(tmp_path_factory)
    support.enable_compile_cache(root)
    return root


@pytest.fixture(scope="module")
def reference(root) -> Path:
    """The uninterrupted single-device run that parallel and resumed runs must reproduce."""
    from tests import train_support as support

    return support.reference_run(root)
