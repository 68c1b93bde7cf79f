"""Input matching: the contract's names are found whatever a converter called or ordered them."""

import pytest

from edge_agent.errors import ModelLoadError
from edge_agent.runtimes.matching import match_inputs

HINTS = {"past": (96, 5), "future": (96, 4)}


def test_exact_names_win() -> None:
    model = {"future": [-1, 96, 4], "past": [-1, 96, 5]}
    assert match_inputs(model, ["past", "future"], HINTS) == {"past": "past", "future": "future"}


def test_tflite_style_names_match_by_token() -> None:
    model = {"serving_default_future:0": [1, 96, 4], "serving_default_past:0": [1, 96, 5]}
    assert match_inputs(model, ["past", "future"]) == {
        "past": "serving_default_past:0",
        "future": "serving_default_future:0",
    }


def test_unnamed_inputs_match_by_shape() -> None:
    model = {"args_1": [1, 96, 4], "args_0": [1, 96, 5]}
    assert match_inputs(model, ["past", "future"], HINTS) == {"past": "args_0", "future": "args_1"}


def test_single_input_needs_no_name() -> None:
    assert match_inputs({"x": [1, 16, 1]}, ["past"]) == {"past": "x"}


def test_ambiguous_inputs_are_refused_with_their_shapes() -> None:
    model = {"a": [1, 96, 4], "b": [1, 96, 4]}
    with pytest.raises(ModelLoadError, match=r"cannot tell which model input is \['past', 'future'\]"):
        match_inputs(model, ["past", "future"], {"past": (96, 4), "future": (96, 4)})


def test_input_count_mismatch_names_both_sides() -> None:
    with pytest.raises(ModelLoadError, match="model has 1 input"):
        match_inputs({"past": [1, 96, 5]}, ["past", "future"])
