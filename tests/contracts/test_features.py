"""Properties of the shared feature pipeline: the numbers the model sees on both sides."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_agent.errors import FeatureError
from edge_agent.features import (
    ChannelSpec,
    FeaturePipeline,
    FeatureSpec,
    GapPolicy,
    NormalisationStats,
    calendar_features,
    fill_gaps,
    forecast_samples,
    sliding_windows,
)

finite_floats = st.floats(-1e4, 1e4, allow_nan=False, width=32)


def _spec(**overrides: object) -> FeatureSpec:
    base: dict[str, object] = {
        "sample_period_s": 900,
        "input_steps": 8,
        "horizon_steps": 4,
        "past_channels": (ChannelSpec(name="p", unit="kW"), ChannelSpec(name="q", unit="kW")),
        "target_channels": ("p",),
        "timezone": "Europe/Paris",
    }
    base.update(overrides)
    return FeatureSpec.model_validate(base)


@given(hnp.arrays(np.float32, st.tuples(st.integers(2, 50), st.integers(1, 4)), elements=finite_floats))
def test_normalise_then_inverse_is_identity(values: np.ndarray) -> None:
    names = [f"c{i}" for i in range(values.shape[1])]
    stats = NormalisationStats.fit(values, names)
    back = stats.inverse(stats.transform(values, names), names)
    np.testing.assert_allclose(back, values, rtol=1e-4, atol=1e-2)


@given(hnp.arrays(np.float32, st.tuples(st.integers(3, 60), st.integers(1, 3)), elements=finite_floats))
def test_normalised_training_data_has_zero_mean_unit_spread(values: np.ndarray) -> None:
    names = [f"c{i}" for i in range(values.shape[1])]
    scaled = NormalisationStats.fit(values, names).transform(values, names).astype(np.float64)
    np.testing.assert_allclose(scaled.mean(axis=0), 0, atol=1e-3)
    spread = scaled.std(axis=0)
    assert np.all((np.abs(spread - 1) < 1e-3) | (spread < 1e-3))


def test_all_missing_channel_is_refused_by_name() -> None:
    values = np.array([[1.0, np.nan], [2.0, np.nan]], dtype=np.float32)
    with pytest.raises(FeatureError, match=r"\['irradiance'\].*no valid value"):
        NormalisationStats.fit(values, ["power", "irradiance"])


@st.composite
def series_with_gaps(draw: st.DrawFn) -> tuple[np.ndarray, GapPolicy]:
    values = draw(hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 3)), elements=finite_floats))
    mask = draw(hnp.arrays(np.bool_, values.shape))
    policy = GapPolicy(method=draw(st.sampled_from(["hold", "interpolate"])), max_gap_steps=draw(st.integers(0, 6)))
    return np.where(mask, np.float32(np.nan), values), policy


def _runs(column: np.ndarray) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, missing in enumerate(np.append(column, False)):
        if missing and start is None:
            start = i
        elif not missing and start is not None:
            runs.append((start, i))
            start = None
    return runs


@given(series_with_gaps())
def test_fill_gaps_keeps_good_values_and_fills_exactly_the_short_runs(case: tuple[np.ndarray, GapPolicy]) -> None:
    values, policy = case
    filled = fill_gaps(values, policy)
    good = np.isfinite(values)
    np.testing.assert_array_equal(filled[good], values[good])
    for c in range(values.shape[1]):
        column_has_data = good[:, c].any()
        for start, end in _runs(~good[:, c]):
            expect_filled = column_has_data and end - start <= policy.max_gap_steps
            assert np.isfinite(filled[start:end, c]).all() == expect_filled
            assert (~np.isfinite(filled[start:end, c])).all() == (not expect_filled)


@given(series_with_gaps())
@settings(max_examples=50)
def test_filled_values_stay_between_their_neighbours(case: tuple[np.ndarray, GapPolicy]) -> None:
    values, policy = case
    filled = fill_gaps(values, policy)
    finite = values[np.isfinite(values)]
    if finite.size:
        assert np.nanmin(filled) >= finite.min() - 1e-3
        assert np.nanmax(filled) <= finite.max() + 1e-3


@given(series_with_gaps(), st.integers(1, 5))
@settings(max_examples=50)
def test_filling_a_batch_equals_filling_each_window(case: tuple[np.ndarray, GapPolicy], batch: int) -> None:
    values, policy = case
    windows = np.stack([np.roll(values, k, axis=0) for k in range(batch)])
    batched = fill_gaps(windows, policy)
    for k in range(batch):
        np.testing.assert_array_equal(batched[k], fill_gaps(windows[k], policy))


def test_interpolation_draws_a_line_and_hold_repeats() -> None:
    values = np.array([[0.0], [np.nan], [np.nan], [3.0]], dtype=np.float32)
    np.testing.assert_allclose(fill_gaps(values, GapPolicy(method="interpolate", max_gap_steps=2))[:, 0], [0, 1, 2, 3])
    np.testing.assert_allclose(fill_gaps(values, GapPolicy(method="hold", max_gap_steps=2))[:, 0], [0, 0, 0, 3])


@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 60), st.integers(1, 3)), elements=finite_floats),
    st.integers(1, 10),
    st.integers(1, 5),
)
def test_sliding_windows_are_the_slices_of_the_series(series: np.ndarray, length: int, stride: int) -> None:
    if length > len(series):
        with pytest.raises(FeatureError, match="shorter than the window"):
            sliding_windows(series, length, stride)
        return
    windows = sliding_windows(series, length, stride)
    assert windows.shape == (len(range(0, len(series) - length + 1, stride)), length, series.shape[1])
    for i, window in enumerate(windows):
        np.testing.assert_array_equal(window, series[i * stride : i * stride + length])


def test_calendar_features_follow_local_time_across_daylight_saving() -> None:
    # 2024-03-31 is the spring-forward day in Paris: 00:00 UTC is 01:00 local before, 02:00 UTC is 04:00 after.
    ts = np.array([1711843200, 1711850400], dtype=np.int64)
    feats = calendar_features(ts, "Europe/Paris")
    hours = (np.degrees(np.arctan2(feats[:, 0], feats[:, 1])) % 360) / 15
    np.testing.assert_allclose(hours, [1.0, 4.0], atol=1e-4)
    # Sunday: the week phase of Monday 00:00 is zero, so Sunday 01:00 is 6 days + 1 hour into the week.
    week_fraction = (np.degrees(np.arctan2(feats[0, 2], feats[0, 3])) % 360) / 360
    assert week_fraction == pytest.approx((6 * 24 + 1) / (7 * 24), abs=1e-5)


def test_unknown_timezone_is_refused_with_an_example() -> None:
    with pytest.raises(ValueError, match="IANA name"):
        _spec(timezone="Mars/Olympus")


def test_target_must_be_observed() -> None:
    with pytest.raises(ValueError, match=r"target channel\(s\) \['soc'\]"):
        _spec(target_channels=("soc",))


def _ramp(n: int) -> tuple[np.ndarray, np.ndarray]:
    ts = 1_700_000_000 + 900 * np.arange(n, dtype=np.int64)
    values = np.stack([np.sin(np.arange(n) / 5), np.cos(np.arange(n) / 7)], axis=1).astype(np.float32)
    return values, ts


def test_device_window_equals_training_sample() -> None:
    values, ts = _ramp(60)
    spec = _spec()
    spec = spec.with_normalisation(NormalisationStats.fit(values, spec.past_channel_names))
    batch, targets, origins = forecast_samples(spec, values, ts)
    assert batch.past.shape == (60 - 8 - 4 + 1, 8, 2 + 4)
    assert batch.future is not None and batch.future.shape == (len(origins), 4, 4)
    assert targets.shape == (len(origins), 4, 1)
    k, origin = 17, int(origins[17])
    one = FeaturePipeline(spec).build(
        values[origin - 8 : origin], ts[origin - 8 : origin], None, ts[origin : origin + 4]
    )
    np.testing.assert_array_equal(one.past[0], batch.past[k])
    assert one.future is not None
    np.testing.assert_array_equal(one.future[0], batch.future[k])
    np.testing.assert_array_equal(targets[k, :, 0], values[origin : origin + 4, 0])


def test_long_gap_invalidates_the_window_with_a_reason() -> None:
    values, ts = _ramp(30)
    spec = _spec(gap_policy=GapPolicy(max_gap_steps=2))
    spec = spec.with_normalisation(NormalisationStats.fit(values, spec.past_channel_names))
    values[10:14, 1] = np.nan
    inputs = FeaturePipeline(spec).build(values[8:16], ts[8:16], None, ts[16:20])
    assert not inputs.valid[0]
    assert inputs.reasons[0] == "gap of 4 samples in ['q'] exceeds the fill limit of 2"
    values[10:12, 1] = 0.5
    assert FeaturePipeline(spec).build(values[8:16], ts[8:16], None, ts[16:20]).valid[0]


def test_too_few_rows_names_the_sizes() -> None:
    values, ts = _ramp(10)
    spec = _spec()
    spec = spec.with_normalisation(NormalisationStats.fit(values, spec.past_channel_names))
    with pytest.raises(FeatureError, match="10 samples are too few for a window of 8 plus a horizon of 4"):
        forecast_samples(spec, values, ts)


def test_reconstruction_samples_target_the_window_itself() -> None:
    values, ts = _ramp(20)
    spec = _spec(horizon_steps=0, calendar=False)
    spec = spec.with_normalisation(NormalisationStats.fit(values, spec.past_channel_names))
    batch, targets, origins = forecast_samples(spec, values, ts)
    assert batch.future is None and batch.as_feeds().keys() == {"past"}
    np.testing.assert_array_equal(targets[0, :, 0], values[origins[0] - 8 : origins[0], 0])


def test_pipeline_decodes_to_physical_units() -> None:
    values, _ts = _ramp(40)
    spec = _spec()
    spec = spec.with_normalisation(NormalisationStats.fit(values, spec.past_channel_names))
    pipeline = FeaturePipeline(spec)
    raw = values[:5, :1]
    np.testing.assert_allclose(pipeline.decode(pipeline.normalise_targets(raw)), raw, atol=1e-6)


def test_clear_sky_is_derived_from_time_and_place_and_tracks_the_satellite_clear_sky() -> None:
    from edge_agent.features import SiteLocation, derive_channels
    from gridedge.datafiles import read_series

    golden = SiteLocation(latitude=39.742, longitude=-105.179)
    times, columns = read_series("w2_pv_system50_15min")
    derived = derive_channels(["clear_sky_ghi"], times, golden)[:, 0]
    reference = columns["ghi_clear"]
    ok = np.isfinite(reference)
    assert np.corrcoef(derived[ok], reference[ok])[0, 1] > 0.99
    assert np.all(derived >= 0) and derived.max() < 1100
    midnight_local = times[(times - 7 * 3600) % 86_400 == 0]
    assert np.all(derive_channels(["clear_sky_ghi"], midnight_local, golden) == 0)


def test_derived_channels_need_a_location() -> None:
    with pytest.raises(ValueError, match=r"derived channel\(s\) \['clear_sky_ghi'\] need location"):
        _spec(known_future_channels=(ChannelSpec(name="clear_sky_ghi", unit="W/m2"),))
    spec = _spec(
        known_future_channels=(ChannelSpec(name="clear_sky_ghi", unit="W/m2"),),
        location={"latitude": 48.78, "longitude": 2.29},
    )
    assert spec.future_is_derivable and spec.derived_past_channels == ()


def _pv_spec() -> FeatureSpec:
    from edge_agent.features import SiteLocation

    spec = _spec(
        past_channels=(ChannelSpec(name="ac_power", unit="W", min_value=0, max_value=3500),),
        target_channels=("ac_power",),
        timezone="America/Denver",
        location=SiteLocation(latitude=39.742, longitude=-105.179),
    )
    stats = NormalisationStats(channels=("ac_power",), mean=(700.0,), std=(1000.0,))
    return spec.with_normalisation(stats)


def test_pv_forecasts_are_decoded_within_zero_and_the_rating_and_zero_while_the_sun_is_down() -> None:
    from edge_agent.features import OutputBounds
    from edge_agent.solar import sun_down

    spec = _pv_spec()
    pipeline = FeaturePipeline(spec)
    # Local midnight to midnight (UTC-6 in June) at Golden, CO: hours of dark on both ends, the day between.
    times = 1_370_066_400 + 900 * np.arange(96, dtype=np.int64)
    raw = np.where(np.arange(96) % 2 == 0, -280.0, 4200.0).astype(np.float32)[:, None]
    outputs = pipeline.normalise_targets(raw)
    bounds = (OutputBounds(min_value=0, max_value=3500, zero_when_sun_down=True),)
    decoded = pipeline.decode(outputs, times, bounds)[:, 0]
    dark = sun_down(times, 900, 39.742, -105.179)
    assert 20 < dark.sum() < 60
    assert np.all(decoded[dark] == 0)
    np.testing.assert_allclose(decoded[~dark], np.where(raw[~dark, 0] < 0, 0.0, 3500.0))
    # Without bounds (a bundle from before they existed) the decoding is unchanged.
    np.testing.assert_allclose(pipeline.decode(outputs)[:, 0], raw[:, 0], rtol=1e-5)
    with pytest.raises(FeatureError, match="step times"):
        pipeline.decode(outputs, None, bounds)
    with pytest.raises(FeatureError, match="2 output bounds"):
        pipeline.decode(outputs, times, bounds * 2)


def test_sun_down_matches_when_the_measured_pv_system_is_dark() -> None:
    from edge_agent.solar import sun_down
    from gridedge.datafiles import read_series

    times, columns = read_series("w2_pv_system50_15min")
    dark = sun_down(times, 900, 39.742, -105.179)
    power = columns["ac_power"]
    assert 0.4 < dark.mean() < 0.55
    # The measured system produces nothing worth a watt-hour while the rule says the sun is down.
    assert np.nanmax(power[dark]) < 15 and np.nanmean(power[dark]) < 0.05


def _seasonal_spec(**overrides: object) -> FeatureSpec:
    # 6-hour "days" (24 samples of 15 min) keep the arrays small; lags of one and two days, a 3-day profile.
    spec = _spec(sample_period_s=900, input_steps=8, horizon_steps=30, seasonal_lags=(96, 192), **overrides)
    return spec


def test_seasonal_inputs_are_the_seasonal_naive_forecasts_over_the_horizon() -> None:
    from edge_agent.baselines import seasonal_naive

    values, ts = _ramp(600)
    values[:, 0] = 3.0 + np.arange(600) % 96 + 0.01 * np.arange(600)
    spec = _seasonal_spec(seasonal_profile_steps=3 * 96)
    spec = spec.with_normalisation(NormalisationStats.fit(values, spec.past_channel_names))
    assert spec.window_steps == 3 * 96
    assert spec.future_feature_names[:3] == ("p_lag_96", "p_lag_192", "p_profile_288")
    origins = np.array([300, 450])
    batch, _, _ = forecast_samples(spec, values, ts, origins=origins)
    assert batch.past.shape == (2, 8, len(spec.past_feature_names)) and batch.valid.all()
    # The model's past is the newest input_steps; the seasonal inputs come from the whole window.
    window = values[origins[0] - 288 : origins[0]]
    pipeline = FeaturePipeline(spec)
    np.testing.assert_allclose(batch.past[0, :, :2], pipeline.stats.transform(window[-8:], ("p", "q")), atol=1e-6)
    seasonal = pipeline.stats.inverse(batch.future[:, :, :3], ("p", "p", "p"))  # type: ignore[index]
    for lag, column in ((96, 0), (192, 1)):
        expected = seasonal_naive(window[None, :, :1], 30, lag)[0, :, 0]
        np.testing.assert_allclose(seasonal[0, :, column], expected, rtol=1e-5)
    days = window[:, 0].reshape(3, 96)
    np.testing.assert_allclose(seasonal[0, :, 2], days.mean(axis=0)[:30], rtol=1e-5)
    # The device builds the same numbers from one window of window_steps samples.
    one = pipeline.build(window, ts[origins[0] - 288 : origins[0]], None, ts[origins[0] : origins[0] + 30])
    np.testing.assert_array_equal(one.future[0], batch.future[0])  # type: ignore[index]


def test_a_gap_in_the_seasonal_history_invalidates_the_window_and_says_why() -> None:
    values, ts = _ramp(600)
    spec = _seasonal_spec(gap_policy=GapPolicy(max_gap_steps=2))
    spec = spec.with_normalisation(NormalisationStats.fit(values, spec.past_channel_names))
    values[300 - 192 : 300 - 182, 0] = np.nan  # ten samples, two days before the origin: lag 192's span
    batch, _, _ = forecast_samples(spec, values, ts, origins=np.array([300, 500]))
    assert batch.valid.tolist() == [False, True]
    assert "seasonal history of ['p'] has a gap" in (batch.reasons[0] or "")


def test_seasonal_inputs_are_refused_without_a_horizon_or_off_whole_days() -> None:
    with pytest.raises(ValueError, match="seasonal inputs need a horizon"):
        _spec(horizon_steps=0, seasonal_lags=(96,))
    with pytest.raises(ValueError, match=r"seasonal_profile_steps \(100\) must be whole days"):
        _spec(seasonal_profile_steps=100)
    assert _spec().window_steps == 8 and _spec().seasonal_feature_names == ()
