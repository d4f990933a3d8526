"""Load the core: the compiled `tidegate._core` or its pure-Python twin `tidegate._twin`."""

import importlib
from types import ModuleType


def load(name: str) -> ModuleType:
    """`rust` → tidegate._core, anything else → tidegate._twin."""
    return importlib.import_module("tidegate._core" if name == "rust" else "tidegate._twin")
