# syntax=docker/dockerfile:1
# group-events worker image. `make image` builds it with Docker, or without an engine with buildah (see README).
#   docker build -t group-events-worker:0.1.0 --build-arg VERSION=0.1.0 --build-arg VCS_REF=$(git rev-parse HEAD) .
# PYTHON_IMAGE may be any Debian bookworm image with Python 3.11 as `python` (make image's local base is one).
# Builder and runtime use the same base so the venv's interpreter symlinks stay valid after the copy.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# All runtime deps (confluent-kafka, hiredis, orjson, pydantic-core) ship manylinux wheels, so no
# compiler is installed. If one ever needs building, add build-essential here, never in the runtime stage.
WORKDIR /src
# Every dependency comes from the lock files (`make lock`): exact versions, each file checked against its hash
# (--require-hashes; --no-deps: nothing unlisted is resolved). First, so a change of the sources alone keeps
# these layers. The build backend gets a venv of its own, not copied into the image.
# The machine's pip settings and CA bundle, when the build is given them (deploy/image/build.py does), reach
# pip as build secrets: they are mounted for these commands and never stored in a layer. Without them pip
# uses the public index and its own CA bundle.
COPY requirements/runtime.txt requirements/build.txt requirements/
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip-ca.crt \
    python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps -r requirements/build.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes --no-deps -r requirements/runtime.txt
ENV PATH=/opt/venv/bin:$PATH
# Then the package: a wheel of `.` built with the locked backend (no isolated build environment, whose backend
# would not be pinned), installed without its dependencies (all there already).
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheel . \
 && pip install --no-deps /tmp/wheel/*.whl \
 && python -c "import worker.config"

FROM ${PYTHON_IMAGE} AS runtime
# Numeric UID/GID so Kubernetes' runAsNonRoot can verify the user without reading /etc/passwd.
RUN groupadd --system --gid 10001 worker \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin worker

COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WORKER_METRICS_PORT=9400

# No WORKDIR: `python -m` puts the cwd on sys.path, so keep it at / (not a writable dir like /tmp).
USER 10001:10001
EXPOSE 9400
# The worker drains, commits and closes on SIGTERM within WORKER_SHUTDOWN_TIMEOUT_SECONDS (default 30);
# give the container runtime more than that (compose stop_grace_period, k8s terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# No curl in slim images: probe liveness with the interpreter already there. urlopen raises on non-2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('WORKER_METRICS_PORT', '9400') + '/healthz', timeout=4)"]

ENTRYPOINT ["python", "-m", "worker"]
CMD ["run"]

# Last, so a new version, commit or date rebuilds only this step (the build arguments change every build).
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="group-events-worker" \
      org.opencontainers.image.description="Kafka worker that turns Qlik Cloud group events into membership-change records" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/group-events-worker"
