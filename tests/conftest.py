"""Test-wide settings: the data cache lives in a per-session temporary directory."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _sgdlab_cache(tmp_path_factory):
    """Keep generated data (mnist1d) out of the user's cache dir during tests."""
    if "SGDLAB_CACHE" not in os.environ:
        os.environ["SGDLAB_CACHE"] = str(tmp_path_factory.mktemp("sgdlab-cache"))
    yield
