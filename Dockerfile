# The xds-server controller image (the Helm chart charts/xds-server runs it):
#   docker build -t xds-server:0.1.0 .
#
# Two stages: the first builds the project's wheel (setup.py compiles protos/ with grpcio-tools, which pip fetches
# into an isolated build environment, and native/ai_filter.c, the Envoy module, with gcc); the second installs only
# that wheel, its dependencies as binary wheels from PyPI (--only-binary: no compiler is needed there). tests/test_wheel_install.py performs the
# same steps in a fresh venv, since no container builder runs where the tests run.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos protos
COPY native native
COPY translators translators
COPY xds_server xds_server
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --only-binary=:all: /wheels/*.whl \
    && rm -rf /wheels
# 65532, as the chart's securityContext (runAsUser/runAsGroup) expects; no home directory is needed.
RUN groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
USER 65532:65532
# ADS, ext_proc, admin (/healthz, /readyz, /metrics, /debug/*).
EXPOSE 18000 1063 19000
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["xds-server"]
CMD ["--help"]
