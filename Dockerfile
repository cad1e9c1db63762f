# syntax=docker/dockerfile:1
# Two images from one build: `api` (the lookup API; no Java) and `dagster` (code location,
# webserver, daemon and run workers; Java for Spark). Not built on the machines this project
# is developed on (no container engine there): see README, "Deployment".
#   docker build --target api -t reco-api .
#   docker build --target dagster -t reco-dagster .

FROM python:3.11-slim-bookworm AS build
# pyspark builds its wheel from the source package; Java is not needed to build it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reco_dagster ./reco_dagster
COPY assets ./assets
COPY resources ./resources
COPY api ./api
# The API's environment has no Dagster and no Spark: a lookup service, not an orchestrator.
RUN python -m venv /opt/api-venv \
    && /opt/api-venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/api-venv/bin/pip install --no-cache-dir . \
    && ! /opt/api-venv/bin/python -c "import dagster" 2>/dev/null \
    && ! /opt/api-venv/bin/python -c "import pyspark" 2>/dev/null
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/venv/bin/pip install --no-cache-dir ".[pipeline]"

FROM python:3.11-slim-bookworm AS runtime
RUN useradd --system --uid 10001 --home-dir /app reco \
    && mkdir -p /app /data /opt/dagster/home \
    && chown -R reco /app /data /opt/dagster/home
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RECO_DATA_DIR=/data
WORKDIR /app

FROM runtime AS api
COPY --from=build /opt/api-venv /opt/venv
USER reco
ENV RECO_API_HOST=0.0.0.0 RECO_API_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"
CMD ["reco-api"]

FROM runtime AS dagster
COPY --from=build /opt/venv /opt/venv
# Spark's JVM, and native BLAS/LAPACK for ALS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless libopenblas0-serial \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/dagster/dagster-postgres.yaml /opt/dagster/home/dagster.yaml
COPY deploy/docker/workspace.yaml /app/workspace.yaml
ENV DAGSTER_HOME=/opt/dagster/home \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python
USER reco
EXPOSE 3000 4000
CMD ["dagster", "code-server", "start", "-m", "reco_dagster.definitions", "-h", "0.0.0.0", "-p", "4000", "--location-name", "reco_dagster"]
