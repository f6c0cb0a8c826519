"""Metrics: correlations, LDS and its noise ceiling, curvature fidelity."""
