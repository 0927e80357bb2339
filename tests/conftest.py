"""Shared test fixtures: the fixture fact model (built once, cached by recipe) and its world."""

from __future__ import annotations

import pytest

from factpatch.fixture.build import ensure_fixture, load_world


@pytest.fixture(scope="session")
def fixture_dir():
    return ensure_fixture()


@pytest.fixture(scope="session")
def world(fixture_dir):
    return load_world(fixture_dir)
