"""Workloads, harnesses and reports that measure kvroute against its peers."""
