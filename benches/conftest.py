"""Fixtures for the benches: the real services of the test suite (tests/ is on pythonpath)."""

from services import *  # noqa: F403
