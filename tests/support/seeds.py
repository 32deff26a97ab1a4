"""Fresh seeds for the property suites (issue 23).

The fixed suites (``derandomize=True``) replay the same schedules every run: regression cases.
On top of them each property suite has a ``fresh`` test drawing from :data:`SEED`, new on every
run (from the OS), printed in pytest's header and in every failure, and replayable by setting
one variable::

    RAYSOURCE_TEST_SEED=123456789 .venv/bin/python -m pytest tests/faults/test_fault_properties.py
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, seed, settings

ENV = "RAYSOURCE_TEST_SEED"
SEED = int(os.environ.get(ENV) or random.SystemRandom().randrange(2**32))
REPLAY = f"{ENV}={SEED}"


def fresh(max_examples: int) -> Callable[[Any], Any]:
    """Decorator (put it above ``@given``): ``max_examples`` drawn from this run's seed."""

    def wrap(test: Any) -> Any:
        test = settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=False,
            print_blob=False,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.function_scoped_fixture,
            ],
        )(test)
        return seed(SEED)(test)

    return wrap


__all__ = ["ENV", "REPLAY", "SEED", "fresh"]
