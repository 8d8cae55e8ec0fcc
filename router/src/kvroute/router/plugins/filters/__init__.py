"""Filters: each keeps the endpoints eligible for a request."""
