"""Decisions on the device: a dispatch plan for battery, generator, shed loads and grid under hard limits.

``site_model`` describes what may be done, ``planner`` solves the plan from forecasts (HiGHS MILP),
``rule`` is the forecast-free fallback, ``dispatch`` holds the shared shapes, physics and limit checks.
"""
