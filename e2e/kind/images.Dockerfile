# The images of an offline kind node, one target each, built by build-node-image.sh from the binaries of
# build-binaries.sh (the build context) and a local Debian bookworm image (BASE_IMAGE). No stage names a registry
# image: none is reachable here. The names these images get are those kubeadm v1.34 and kind v0.30.0 ask for.
ARG BASE_IMAGE
ARG KIND_BASE_STAGE=kind-base-stage

# The Kubernetes components, etcd, CoreDNS and local-path-provisioner are static Go binaries: FROM scratch with
# a /tmp, as the upstream distroless images have.
FROM scratch AS static
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin

FROM static AS kube-apiserver
COPY kube-apiserver /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/kube-apiserver"]

FROM static AS kube-controller-manager
COPY kube-controller-manager /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/kube-controller-manager"]

FROM static AS kube-scheduler
COPY kube-scheduler /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/kube-scheduler"]

FROM static AS etcd
COPY etcd /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/etcd"]

FROM static AS coredns
COPY coredns /coredns
ENTRYPOINT ["/coredns"]

FROM static AS local-path-provisioner
COPY local-path-provisioner /usr/bin/
ENTRYPOINT ["/usr/bin/local-path-provisioner"]

# kube-proxy programs the node with iptables and conntrack, so its image carries them (Debian's iptables uses the
# nf_tables backend, as the node's and this host's do).
FROM ${BASE_IMAGE} AS kube-proxy
RUN apt-get update && apt-get install -y --no-install-recommends iptables conntrack ipset \
    && rm -rf /var/lib/apt/lists/*
COPY kube-proxy /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/kube-proxy"]

# The sandbox ("pause") image containerd starts for every pod.
FROM scratch AS pause
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]

# local-path-provisioner's helper pods run `sh -c` scripts (mkdir, rm): any image with a shell.
FROM ${BASE_IMAGE} AS local-path-helper

# kind's node-image build insists on having kindnetd's image, but our clusters set disableDefaultCNI and use a
# static ptp CNI config (cluster.yaml), so kindnetd never runs: this stands in for it and only sleeps.
FROM scratch AS cni-placeholder
COPY pause /pause
LABEL io.kvroute.placeholder="kindnetd never runs in kvroute's kind clusters (disableDefaultCNI)"
ENTRYPOINT ["/pause"]

# kind's base image: its Dockerfile's `base` stage (apt packages, systemd, kind's files; built separately as
# KIND_BASE_STAGE), then what its later stages clone and build from GitHub, here from our Go-built binaries.
# One change to kind's containerd config: restrict_oom_score_adj, which kind sets only for rootless nodes. The node
# has no CAP_SYS_RESOURCE (Docker's runtime here drops it: scripts/docker/runc-nosysres), so no process in it may
# lower its oom_score_adj, and runc fails every sandbox asking for -998 ("can't get final child's PID from pipe").
FROM ${KIND_BASE_STAGE} AS node-base-build
COPY containerd ctr containerd-shim-runc-v2 crictl /usr/local/bin/
COPY runc /usr/local/sbin/runc
COPY cni/ /opt/cni/bin/
RUN ctr oci spec \
        | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
        | jq 'del(.process.rlimits)' \
        > /etc/containerd/cri-base.json \
    && sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' /etc/containerd/config.toml \
    && grep -q 'restrict_oom_score_adj = true' /etc/containerd/config.toml \
    && containerd --version && runc --version && crictl --version

FROM scratch AS node-base
COPY --from=node-base-build / /
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
