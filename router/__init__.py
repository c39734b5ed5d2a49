"""Routing logic with no web framework: confidence signals, routing policies, calibration, evaluation."""
