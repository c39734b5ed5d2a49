# The gateway (`kdgate serve`): the core package only, no torch; it fronts vLLM or `kdgate engine` over HTTP.
#   docker build -f deploy/docker/gateway.Dockerfile -t kdgate/gateway:0.1.0 .            (from the repository root)
#   docker run -p 8000:8000 -v "$PWD/kdgate.yaml:/etc/kdgate/config.yaml:ro" kdgate/gateway:0.1.0
# Settings: the YAML mounted at /etc/kdgate/config.yaml (deploy/kdgate-vllm.yaml is a commented start), any key
# overridden by its KDGATE_ variable (docs/configuration.md). It listens on 0.0.0.0, so it refuses to start
# without API keys (SECURITY.md).
# Where no registry answers: deploy/docker/debian-base.sh, then --build-arg PYTHON_IMAGE=kdgate-python-base:3.11-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# The builder installs kdgate into /opt/venv (every dependency ships binary wheels: no compiler in either stage);
# the runtime copies that venv alone, without the sources, pip's cache or the build's setuptools.
FROM ${PYTHON_IMAGE} AS builder
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kdgate/ kdgate/
COPY gateway/ gateway/
COPY runtime/ runtime/
COPY router/ router/
COPY distill/ distill/
COPY loadtests/ loadtests/
RUN /opt/venv/bin/pip install --no-cache-dir .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="kdgate-gateway" \
      org.opencontainers.image.description="OpenAI-compatible gateway: a distilled student, its teacher, handoff and shadow comparisons" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 kdgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /srv/kdgate --create-home kdgate
COPY --from=builder /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KDGATE_HOST=0.0.0.0 \
    KDGATE_PORT=8000
# The default SQLite store (var/) lands here when no PostgreSQL URL is given.
WORKDIR /srv/kdgate
USER 10001:10001
EXPOSE 8000
# /healthz is liveness only and open without a key; /readyz (also open) checks both backends, for readiness probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('KDGATE_PORT', '8000'), timeout=4)"]
CMD ["kdgate", "serve", "--config", "/etc/kdgate/config.yaml"]
