"""Prefix-cache affinity: prompt block hashing, the approximate endpoint index and the match info plugins share."""
