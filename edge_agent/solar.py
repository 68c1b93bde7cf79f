"""Clear-sky irradiance from astronomy alone, numpy only: a feature the device can compute for any time.

A PV forecaster needs to know how much sun the sky could give over the horizon. Measured or satellite
clear-sky series exist only for the past, so the trainer and the device both derive it here from the
timestamp and the site's location: solar position after the NOAA/Spencer approximations (declination,
equation of time) and the Haurwitz clear-sky model, GHI = 1098 cos(z) exp(-0.059 / cos(z)) W/m2. Written
by hand because pvlib would bring pandas onto the device; the trainer and the device share this code, so
whatever the approximation errs, it errs identically on both sides.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

SECONDS_PER_DAY = 86_400


def cos_zenith(timestamps_utc: NDArray[np.integer], latitude: float, longitude: float) -> NDArray[np.float64]:
    """Cosine of the solar zenith angle at each UTC timestamp (negative at night)."""
    ts = np.asarray(timestamps_utc, dtype=np.float64)
    day_of_year = np.floor(ts / SECONDS_PER_DAY + 4.0) % 365.2422  # days since ~1 Jan, good to a day
    gamma = 2 * np.pi * day_of_year / 365.0
    declination = (
        0.006918
        - 0.399912 * np.cos(gamma)
        + 0.070257 * np.sin(gamma)
        - 0.006758 * np.cos(2 * gamma)
        + 0.000907 * np.sin(2 * gamma)
        - 0.002697 * np.cos(3 * gamma)
        + 0.00148 * np.sin(3 * gamma)
    )
    equation_of_time_min = 229.18 * (
        0.000075
        + 0.001868 * np.cos(gamma)
        - 0.032077 * np.sin(gamma)
        - 0.014615 * np.cos(2 * gamma)
        - 0.040849 * np.sin(2 * gamma)
    )
    utc_minutes = (ts % SECONDS_PER_DAY) / 60.0
    solar_minutes = utc_minutes + equation_of_time_min + 4.0 * longitude
    hour_angle = np.radians(solar_minutes / 4.0 - 180.0)
    lat = np.radians(latitude)
    return np.sin(lat) * np.sin(declination) + np.cos(lat) * np.cos(declination) * np.cos(hour_angle)


def clear_sky_ghi(timestamps_utc: NDArray[np.integer], latitude: float, longitude: float) -> NDArray[np.float32]:
    """Haurwitz clear-sky global horizontal irradiance (W/m2) at each UTC timestamp; 0 at night."""
    cz = cos_zenith(timestamps_utc, latitude, longitude)
    up = cz > 0
    ghi = np.where(up, 1098.0 * cz * np.exp(-0.059 / np.where(up, cz, 1.0)), 0.0)
    return ghi.astype(np.float32)


def sun_down(
    timestamps_utc: NDArray[np.integer], period_s: int, latitude: float, longitude: float
) -> NDArray[np.bool_]:
    """True where the sun stays below the horizon from one sample period before to one after each timestamp.

    A period's label may be its start or its end depending on the source, so the whole span around it must
    be dark before a PV forecast is forced to zero: sunrise and sunset periods keep their small output.
    """
    ts = np.asarray(timestamps_utc, dtype=np.int64)
    offsets = np.array([-1.0, -0.5, 0.0, 0.5, 1.0]) * period_s
    cz = np.stack([cos_zenith(ts + int(o), latitude, longitude) for o in offsets])
    return np.asarray((cz <= 0).all(axis=0))
