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
# No HEALTHCHECK: the runner serves no health endpoint yet (it reconnects to the database by
# itself, and a crash ends the container for the restart policy). Add one calling the endpoint
# once `pgwebhooks run` serves it.
# SIGTERM (docker stop) makes the runner stop claiming, finish in-flight requests within
# --shutdown-grace (10 s) and hand back the rest; keep `docker stop -t` above that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgwebhooks", "run"]
CMD ["--log-format", "json"]
