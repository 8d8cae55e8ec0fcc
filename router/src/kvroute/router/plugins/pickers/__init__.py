"""Pickers: each chooses the target endpoint and its fallbacks from the summed scores."""
