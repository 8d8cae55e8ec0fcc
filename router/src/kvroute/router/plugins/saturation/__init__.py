"""Saturation detectors: admission control for sheddable requests."""
