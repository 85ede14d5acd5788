# citykpi service image: slim Python 3.11, non-root user, Numba kernels compiled at build time.
#
#   docker build -t citykpi .                      (from the repository root)
#   docker run --rm --env-file my.env citykpi       (default command: run --no-progress)
#   docker run --rm --env-file my.env citykpi migrate
#
# Configuration comes only from the environment (CITYKPI_…, see core/config.py) or a TOML file named
# by CITYKPI_CONFIG_FILE; nothing secret is baked into the image.
FROM python:3.11-slim-bookworm

ARG CITYKPI_UID=10001
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/citykpi/venv \
    PATH=/opt/citykpi/venv/bin:$PATH \
    NUMBA_CACHE_DIR=/var/cache/citykpi/numba \
    CITYKPI_HTTP__HOST=0.0.0.0 \
    CITYKPI_HTTP__PORT=9464

# The service user owns only the Numba cache and its (empty) working directory.
RUN groupadd --system --gid "$CITYKPI_UID" citykpi \
 && useradd --system --uid "$CITYKPI_UID" --gid citykpi --home-dir /var/lib/citykpi --no-create-home \
        --shell /usr/sbin/nologin citykpi \
 && install -d -o citykpi -g citykpi -m 0750 /var/lib/citykpi \
 && install -d -o citykpi -g citykpi -m 0755 /var/cache/citykpi /var/cache/citykpi/numba \
 && python -m venv "$VIRTUAL_ENV"

# Dependencies pinned by constraints.txt; the sources are installed (not editable) and then removed,
# so the only copy the service imports is the one in site-packages.
WORKDIR /opt/citykpi/src
COPY pyproject.toml constraints.txt README.md ./
COPY core ./core
COPY ingest ./ingest
COPY processors ./processors
COPY kpi_rollups ./kpi_rollups
COPY schemas ./schemas
RUN pip install -c constraints.txt . \
 && cd / && rm -rf /opt/citykpi/src

# An empty working directory: the settings model also reads ./.env and ./.stack/urls.env, and there
# must be none of those in the image.
WORKDIR /var/lib/citykpi
USER citykpi:citykpi

# Compile every Numba kernel now (as the service user, into NUMBA_CACHE_DIR), so a container starts in
# a fraction of a second instead of ~10 s of JIT. The cache is keyed by the installed source files.
RUN python -c "from processors.kernels import warm_up; print(warm_up())"

EXPOSE 9464
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CITYKPI_HTTP__PORT', '9464'), timeout=4)"]

ENTRYPOINT ["citykpi"]
CMD ["run", "--no-progress"]
