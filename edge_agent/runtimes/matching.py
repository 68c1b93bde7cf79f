"""Match the model's own input tensors to the contract's input names ("past", "future").

Converters rename and reorder inputs: TFLite calls them ``serving_default_past:0`` and may put
``future`` first; a model converted from a bare function may carry neither name. Matching goes by exact
name, then by name token, then by a unique shape, and refuses to guess beyond that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from edge_agent.errors import ModelLoadError


def _tokens(name: str) -> set[str]:
    return {t for t in re.split(r"[^0-9A-Za-z]+", name.lower()) if t}


def match_inputs(
    model_inputs: Mapping[str, Sequence[int]],
    wanted: Sequence[str],
    shape_hints: Mapping[str, Sequence[int]] | None = None,
    artefact: str = "model",
) -> dict[str, str]:
    """Map each contract name in ``wanted`` to one of the model's input names.

    ``model_inputs`` maps the model's input names to their shapes (batch axis first, any size);
    ``shape_hints`` gives the expected shape without the batch axis for each contract name.
    """
    if len(model_inputs) != len(wanted):
        raise ModelLoadError(
            f"{artefact}: model has {len(model_inputs)} input(s) {sorted(model_inputs)} but the feature "
            f"spec gives {len(wanted)} ({list(wanted)}); the bundle's model and manifest disagree"
        )
    mapping: dict[str, str] = {}
    free = dict(model_inputs)
    for name in wanted:
        if name in free:
            mapping[name] = name
            free.pop(name)
    for name in [w for w in wanted if w not in mapping]:
        by_token = [m for m in free if name.lower() in _tokens(m)]
        if len(by_token) == 1:
            mapping[name] = by_token[0]
            free.pop(by_token[0])
    for name in [w for w in wanted if w not in mapping]:
        hint = tuple((shape_hints or {}).get(name, ()))
        by_shape = [m for m, shape in free.items() if hint and tuple(shape[1:]) == hint]
        if len(by_shape) == 1:
            mapping[name] = by_shape[0]
            free.pop(by_shape[0])
    unmatched = [w for w in wanted if w not in mapping]
    if len(unmatched) == 1 and len(free) == 1:
        mapping[unmatched[0]] = next(iter(free))
        unmatched = []
    if unmatched:
        raise ModelLoadError(
            f"{artefact}: cannot tell which model input is {unmatched} among {sorted(free)} (shapes "
            f"{ {m: list(s) for m, s in free.items()} }); export the model with inputs named "
            f"{list(wanted)}"
        )
    return mapping
