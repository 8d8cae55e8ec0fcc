"""kvroute's control plane: a kopf operator that runs one router per InferencePool.

For every `InferencePool` (inference.networking.k8s.io/v1) it renders the router configuration from the pool's
`SchedulingProfile` (kvroute.io/v1alpha1), or the built-in default when the pool has none, and server-side applies
a ConfigMap, a ServiceAccount with a Role and RoleBinding, a Deployment and the Service the pool's
`endpointPickerRef` names, all owned by the pool. It never writes the pool itself; a profile gets only its status.

Layout: `main` registers the kopf handlers, `handlers/` are thin, `reconcile` decides and applies,
`resources/` and `render` are pure functions from specs to manifests, `status` computes conditions, `kube` is
the API client (kubernetes_asyncio) and the credentials it shares with kopf, `crdgen` generates the
SchedulingProfile CRD from the router's configuration models.
"""
