"""Nonsense from the field bus: any register words, and any values a window can end up holding.

Whatever words a device answers (sentinels such as 0x8000/0xFFFF, NaN and infinity bit patterns,
extremes), decoding never raises and a channel is either a finite usable value or marked missing or
out of range; the model never sees a non-finite number. A window holding NaN, infinity or huge values
is either turned into finite model inputs or refused with a reason, never an exception.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_agent.features import ChannelSpec, FeaturePipeline, FeatureSpec, NormalisationStats
from edge_agent.sensors.base import ChannelStatus
from edge_agent.sensors.registers import decode_registers, load_register_map, plan_blocks, shipped_register_maps_dir

FAULTS = settings.get_profile("gridedge-faults")
MAPS = {path.stem: load_register_map(path) for path in sorted(shipped_register_maps_dir().glob("*.yaml"))}
SENTINELS = [0x0000, 0x7FFF, 0x8000, 0xFFFF, 0x7FC0, 0x7F80, 0xFF80, 0xFFC0]
word = st.one_of(st.sampled_from(SENTINELS), st.integers(0, 0xFFFF))


@FAULTS
@given(map_name=st.sampled_from(sorted(MAPS)), data=st.data())
def test_any_register_words_decode_to_usable_missing_or_out_of_range_values(map_name: str, data: st.DataObject) -> None:
    register_map = MAPS[map_name]
    addresses = [(b.function, b.start + i) for b in plan_blocks(register_map) for i in range(b.count)]
    answered = data.draw(st.lists(st.booleans(), min_size=len(addresses), max_size=len(addresses)))
    words = {address: data.draw(word) for address, keep in zip(addresses, answered, strict=True) if keep}
    channels = decode_registers(register_map, words, 1_800_000_000.0, "dev.")
    assert channels, "a register map without channels"
    for name, value in channels.items():
        if value.status is ChannelStatus.OK:
            assert math.isfinite(value.value), (name, value)
        elif value.status is ChannelStatus.MISSING:
            assert math.isnan(value.value), (name, value)


def _pipeline() -> FeaturePipeline:
    channels = (ChannelSpec(name="p", unit="kW"), ChannelSpec(name="q", unit="kW"))
    history = np.random.default_rng(0).normal(5.0, 2.0, size=(200, 2)).astype(np.float32)
    spec = FeatureSpec.model_validate(
        {
            "sample_period_s": 900,
            "input_steps": 8,
            "horizon_steps": 4,
            "past_channels": channels,
            "target_channels": ("p",),
            "timezone": "Europe/Paris",
        }
    )
    return FeaturePipeline(spec.with_normalisation(NormalisationStats.fit(history, ["p", "q"])))


PIPELINE = _pipeline()
nasty = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 0.0, 32767.0, 65535.0]),
)


@FAULTS
@given(values=hnp.arrays(np.float32, (8, 2), elements=nasty))
def test_any_window_becomes_finite_model_inputs_or_a_refusal_with_a_reason(values: np.ndarray) -> None:
    starts = 1_800_000_000 + 900 * np.arange(8, dtype=np.int64)
    future = (starts[-1] + 900 * np.arange(1, 5, dtype=np.int64))[np.newaxis]
    inputs = PIPELINE.build(values, starts, None, future)
    if inputs.valid[0]:
        assert np.isfinite(inputs.past).all()
    else:
        assert inputs.reasons[0]
