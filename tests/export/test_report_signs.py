"""The export report says which way a metric moved, whatever the metric's sign convention."""

from __future__ import annotations

from gridedge.export.report import describe_change, relative_change


def test_worse_mae_is_positive_and_says_worse() -> None:
    assert describe_change(relative_change(1.005, 1.0), higher_is_better=False) == "+0.50 % (worse)"
    assert describe_change(relative_change(0.99, 1.0), higher_is_better=False) == "-1.00 % (better)"


def test_lower_f1_is_negative_and_says_worse() -> None:
    assert describe_change(relative_change(0.8, 0.9), higher_is_better=True) == "-11.11 % (worse)"
    assert describe_change(relative_change(0.9, 0.9), higher_is_better=True) == "+0.00 % (same)"
