"""Min-max normalisation shared by every scorer that ranks endpoints on a raw quantity.

For values `v_e` with `lo = min(v)` and `hi = max(v)`:

    higher is better:  score_e = (v_e - lo) / (hi - lo)
    lower is better:   score_e = (hi - v_e) / (hi - lo)

When every value is equal (`hi == lo`, including a single endpoint) every endpoint scores 1.0: nothing
distinguishes them, and a full score keeps the scorer neutral instead of penalising the whole pool.
"""

from __future__ import annotations

from collections.abc import Mapping


def normalize_min_max(values: Mapping[str, float], *, lower_is_better: bool) -> dict[str, float]:
    """Map each value to [0, 1] by its position between the minimum and the maximum; `{}` for no values."""
    if not values:
        return {}
    lo = min(values.values())
    hi = max(values.values())
    span = hi - lo
    if span <= 0:
        return dict.fromkeys(values, 1.0)
    if lower_is_better:
        return {key: (hi - value) / span for key, value in values.items()}
    return {key: (value - lo) / span for key, value in values.items()}
