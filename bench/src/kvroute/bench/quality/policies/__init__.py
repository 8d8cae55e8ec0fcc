"""Routing policies under test: kvroute configuration documents (`configs`) and re-implementations of peers."""
