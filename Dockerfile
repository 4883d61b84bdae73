# syntax=docker/dockerfile:1
# The pgwebhooks runner. Build and run:
#   docker build -t pgwebhooks .
#   docker run --rm -e PGWEBHOOKS_DSN=postgresql://webhook_runner@db.internal/app pgwebhooks
# Arguments after the image name replace the default ones (`--log-format json`), e.g.
#   docker run ... pgwebhooks --log-format json --concurrency 100
# Install the schema once, from a deploy job or by hand, with the same image:
#   docker run --rm -e PGWEBHOOKS_DSN=postgresql://postgres@db.internal/app --entrypoint pgwebhooks pgwebhooks migrate

# Stage 1: wheels for pgwebhooks and every dependency, so the runtime stage needs no compiler,
# no pip cache and no source tree.
FROM python:3.12-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runner ./runner
COPY sql ./sql
COPY plpython ./plpython
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Stage 2: the runtime. Only the installed wheels and an unprivileged user.
FROM python:3.12-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 pgwebhooks \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin pgwebhooks
# The wheels are bind-mounted, not copied, so they add no layer to the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/pgwebhooks-*.whl
USER 10001:10001
# /metrics (Prometheus), /healthz and /readyz on port 9187 (publish it for a Prometheus outside;
# unset PGWEBHOOKS_METRICS_PORT to serve none). The health check asks /healthz: the process is
# alive and its event loop not stuck. /readyz (database reachable, schema compatible) is for
# orchestrators that route or roll out by readiness; a database outage must not restart runners.
ENV PGWEBHOOKS_METRICS_PORT=9187 \
    PGWEBHOOKS_METRICS_HOST=0.0.0.0
EXPOSE 9187
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9187/healthz', timeout=4)"]
# SIGTERM (docker stop) makes the runner stop claiming, finish in-flight requests within
# --shutdown-grace (10 s) and hand back the rest; keep `docker stop -t` above that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgwebhooks", "run"]
CMD ["--log-format", "json"]
