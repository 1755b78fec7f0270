from __future__ import annotations

import os

import pytest


def require_or_skip(condition: bool, reason: str) -> None:
    """Skip when something optional is absent, unless INCA_REQUIRE_SLOW=1 (CI): then fail."""
    if condition:
        return
    if os.environ.get("INCA_REQUIRE_SLOW") == "1":
        pytest.fail(f"{reason} (INCA_REQUIRE_SLOW=1: the slow tests must run here)")
    pytest.skip(reason)
