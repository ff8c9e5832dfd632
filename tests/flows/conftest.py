"""Fixtures of the flows/CLI tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fresh, empty SHOAL_HOME for the process (no registry URL, no key passphrase)."""
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SHOAL_REGISTRY", raising=False)
    monkeypatch.delenv("SHOAL_KEY_PASSPHRASE", raising=False)
    return tmp_path / "home"
