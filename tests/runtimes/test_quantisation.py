"""The affine (de)quantisation the runtimes apply around int8 models."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.runtimes.base import dequantise, quantise


@given(
    st.floats(min_value=1e-3, max_value=1.0),
    st.integers(min_value=-20, max_value=20),
    st.lists(st.floats(min_value=-50, max_value=50), min_size=1, max_size=20),
)
def test_round_trip_error_is_half_a_step_inside_the_range(scale: float, zero: int, values: list[float]) -> None:
    x = np.asarray(values, dtype=np.float32)
    q = quantise(x, scale, zero, np.dtype(np.int8))
    assert q.dtype == np.int8
    back = dequantise(q, scale, zero)
    low, high = (-128 - zero) * scale, (127 - zero) * scale
    inside = (x >= low) & (x <= high)
    assert np.all(np.abs(back[inside] - x[inside]) <= scale / 2 + 1e-5)
    saturated = np.where(x[~inside] > high, high, low)
    assert np.allclose(back[~inside], saturated, atol=1e-5)
