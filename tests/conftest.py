import os
from pathlib import Path

import pytest
import torch

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test decodes into its own cache unless it opts into the session-wide one."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_cifar(tmp_path_factory) -> Path:
    """The shared CIFAR-10 JPEG copy; skipped (with the reason) where ../shared/data is absent."""
    if not SHARED_CIFAR.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI requires {SHARED_CIFAR} (the shared CIFAR-10 copy) but it is absent")
        pytest.skip(f"needs {SHARED_CIFAR} (the shared CIFAR-10 copy); CI has it")
    return SHARED_CIFAR


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One decoded cache shared by the tests that read the big CIFAR copy, so it is decoded once per session."""
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture
def one_thread():
    """One thread for a test of small tensors: on a busy 2-core machine two threads spend most of their time waiting
    on each other (tests/test_recipes.py says by how much)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
