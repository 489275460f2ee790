# The listener daemon (README.md, "The container"). Build:  docker build -t listener .
# Run:  docker run --rm --env-file .env listener migrate           (apply migrations/ once)
#       docker run -d --name listener --env-file .env -p 9464:9464 --stop-timeout 30 listener
#                                                                  (the daemon, `listener run`)

# ---- build: resolve the locked dependencies and the project into /app/.venv -------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_PROGRESS=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

# The ghcr.io uv image is not reachable from every build machine; PyPI is.
RUN pip install "uv>=0.5,<1"

WORKDIR /src

# Dependencies first, from the lock file only: this layer is reused until uv.lock changes.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --no-editable

# Then the project itself, installed as a wheel (not editable), so the SQL files travel inside
# the package as listener/_migrations (pyproject's hatch force-include).
COPY README.md ./
COPY listener ./listener
COPY migrations ./migrations
RUN uv sync --frozen --no-dev --no-editable \
    && /app/.venv/bin/python -I -c "from listener.commands.migration_files import migrations_dir as m; \
assert m().name == '_migrations' and any(m().glob('*.sql')), m()" \
    && /app/.venv/bin/python -I -c "from importlib.resources import files; w = files('listener.web'); \
assert w.joinpath('templates', 'status.html').is_file() and w.joinpath('static', 'status.css').is_file()"

# ---- runtime: the venv and nothing else, as a non-root user ------------------------------------
FROM python:3.11-slim AS runtime

RUN groupadd --system --gid 10001 listener \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin listener \
    && mkdir -p /app/data \
    && chown listener:listener /app/data

WORKDIR /app

# Owned by root and read-only for the service user: the code cannot be changed at run time.
COPY --from=build /app/.venv /app/.venv
# For operators (psql -f ...); `listener migrate` reads the copy inside the installed package.
COPY --from=build /src/migrations /app/migrations

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LISTENER_DATA_DIR=/app/data \
    LISTENER_METRICS_HOST=0.0.0.0 \
    LISTENER_METRICS_PORT=9464

USER 10001:10001

EXPOSE 9464

# No curl in slim images: ask /healthz with the standard library. A 503 raises HTTPError and
# nothing listening raises URLError; either exits 1, which Docker reads as unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LISTENER_METRICS_PORT', '9464') + '/healthz', timeout=3)"

# SIGTERM goes straight to the listener (exec form, PID 1): it stops claiming, drains, exits 0.
ENTRYPOINT ["listener"]
CMD ["run"]
