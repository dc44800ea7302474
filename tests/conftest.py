"""Shared pytest setup: the --runslow switch, the committed tests/fixtures/ and the location of ../shared/."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_FIXTURES = REPO / "tests" / "fixtures"  # committed: present in every clone
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
REALDATA = SHARED / "realdata" / "ntu"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def shared_file(path):
    """Return ``path`` (under ../shared/), or skip the test with a reason if it is absent."""
    if not path.exists():
        pytest.skip(f"reference data not available: {path} (the ../shared/ folder beside the repo)")
    return path
