"""A real Kubernetes control plane on loopback for the e2e suite: build (``build.sh``), key material
(``pki``), processes (``process``) and the cluster itself (``cluster``)."""
