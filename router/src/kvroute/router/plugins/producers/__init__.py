"""Data producers: each publishes, once per scheduling cycle, what the filters and scorers of the cycle read."""
