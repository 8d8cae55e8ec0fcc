"""The manifests of a pool's children, each a pure function of the pool, its configuration and the settings.

Every manifest holds only fields the operator owns: they are server-side applied whole, and a field left out is
left to others (e.g. `spec.replicas` when the profile does not set it, for an autoscaler).
"""
