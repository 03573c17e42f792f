# syntax=docker/dockerfile:1
# workspace-proxy container image.
#
#   docker build -t workspace-proxy:0.1.0 .
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:9090:9090 --stop-timeout 40 \
#     -v "$PWD/my-config.yaml:/etc/workspace-proxy/config.yaml:ro" -e WP_SIGNING_KEY=... \
#     workspace-proxy:0.1.0
#
# No config is baked in: mount one at /etc/workspace-proxy/config.yaml (or pass other arguments,
# e.g. `check-config FILE` or `emulator --host 0.0.0.0`). Inside a container the config must set
# `listen.host` (and `admin.host` for probes from outside) to 0.0.0.0 unless the clients share the
# container's network namespace (a Kubernetes sidecar). See deploy/README.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: a wheel of the project plus wheels of its runtime dependencies ---------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY workspace_proxy ./workspace_proxy
# The project's wheel and the wheels of its runtime dependencies (aiohttp and its compiled
# helpers are published as binary wheels: nothing is compiled here, no compiler is needed).
RUN pip wheel --wheel-dir /wheels .

# --- runtime: slim Python, the wheels installed offline, nothing else ---------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="workspace-proxy" \
      org.opencontainers.image.description="Reverse proxy for Looker that pins every API session to a team's workspace" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# --no-index: only what the builder produced is installed (so pinning here would add nothing:
# the builder's wheels are the versions). The wheels are bind-mounted from the builder stage, so
# they never become a layer of this image. Then the packaging tools go: nothing in the running
# image can build or install packages.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --root-user-action=ignore --no-index --find-links=/wheels \
        workspace-proxy \
 && pip uninstall --yes --root-user-action=ignore pip setuptools wheel \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin workspace-proxy
# Relative `{file: ...}` secret paths in the config resolve against this directory.
WORKDIR /etc/workspace-proxy
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# 8080: listen.port (the proxied Looker API); 9090: admin.port (/healthz, /readyz, /metrics).
EXPOSE 8080 9090
# Liveness only (/readyz would mark the container unhealthy whenever Looker is down). Assumes the
# admin listener on its default port 9090, bound to 127.0.0.1 or 0.0.0.0. Stdlib only: no curl.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
# Exec form, no shell and no init: the proxy is PID 1 and handles its signals itself (SIGTERM or
# SIGINT: readiness 503, drain, exit 0; SIGHUP: reload the config, e.g. `docker kill -s HUP`).
# Give it more than shutdown.drain_s + shutdown.grace_s to stop (`docker stop -t`, compose
# stop_grace_period, Kubernetes terminationGracePeriodSeconds); Docker's default is 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["workspace-proxy"]
CMD ["serve", "-c", "/etc/workspace-proxy/config.yaml"]
