"""Discrete-event harness: the engine model under a virtual clock, many engines, one routing policy."""
