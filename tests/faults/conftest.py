"""The fault-injection suite: garbage commands, mutated configs, nonsense registers, damaged state files.

Every test here is marked ``faults`` and sized for CI (a modest number of examples per property, the
whole folder in well under a minute). ``GRIDEDGE_SOAK=1`` multiplies the examples for a long run
(benchmarks, before a release): ``GRIDEDGE_SOAK=1 pytest -m faults``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SOAK = os.environ.get("GRIDEDGE_SOAK") == "1"
# Each property asks settings.get_profile(FAULTS_PROFILE). No per-example deadline: on a shared CI
# machine a property must fail on its property, not on time.
FAULTS_PROFILE = "gridedge-faults"
settings.register_profile(
    FAULTS_PROFILE,
    max_examples=1500 if SOAK else 30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.path):
            item.add_marker(pytest.mark.faults)


def scalar_values(*, non_finite: bool, text_size: int) -> st.SearchStrategy[object]:
    """Any JSON-ish scalar of any type, with huge integers; NaN and infinities when ``non_finite``."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=non_finite, allow_infinity=non_finite),
        st.text(max_size=text_size),
    )
