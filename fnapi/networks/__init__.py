"""Functional networks: activation capture, ICA, stability, attribution, and the template format."""
