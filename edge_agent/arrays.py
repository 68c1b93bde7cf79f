"""The array type every numeric contract uses: float32, the dtype models are fed and answer in."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]
