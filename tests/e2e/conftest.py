"""End-to-end fixtures: real services (services.py) and the gateway process (gateway.py)."""

from gateway import *  # noqa: F403
from services import *  # noqa: F403
