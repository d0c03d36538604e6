# streamproc image: docker build -t streamproc . && docker run streamproc
# The same image runs a worker (the default command) or the HTTP read API (streamproc serve).
# Configuration comes from STREAMPROC_* environment variables (see README and settings.py);
# STREAMPROC_MODELS__SIGNING_KEY is required and must never be baked into the image.
# Dependencies come from requirements.lock (exact versions with hashes; README, "Refreshing
# the lock file"), so rebuilding the same commit installs the same packages.

FROM python:3.11.14-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Every runtime dependency ships manylinux wheels for CPython 3.11: no compiler needed.
RUN python -m venv /opt/venv
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY streamproc ./streamproc
# --no-deps: everything it needs is already installed, pinned and verified, from the lock.
RUN /opt/venv/bin/pip install --no-deps .

FROM python:3.11.14-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Non-root; its home is the working directory, where Faust keeps its small data directory.
RUN groupadd --system --gid 10001 streamproc \
    && useradd --system --uid 10001 --gid streamproc --create-home \
       --home-dir /var/lib/streamproc --shell /usr/sbin/nologin streamproc
COPY --from=build /opt/venv /opt/venv
USER streamproc:streamproc
WORKDIR /var/lib/streamproc
# 6066: the worker's /metrics and health; 8080: the read API (streamproc serve).
EXPOSE 6066 8080
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=12 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:6066/healthz', timeout=5).status == 200 else 1)"]
STOPSIGNAL SIGTERM
CMD ["streamproc", "worker"]
