# One image for every role: `python start_service.py [--role api|worker|prefect]` and the Prefect
# server's own processes (`prefect server start --no-services`, `prefect server services start`).
# Build from the repository root: docker build -t wos .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (a layer that changes only with the pins): every requirement is pinned.
COPY requirements.txt deploy/requirements-prefect-server.txt ./
RUN pip install --no-cache-dir -r requirements.txt -r requirements-prefect-server.txt

# The code stays owned by root (read-only to the service); only /data is writable.
RUN useradd --system --uid 10001 --no-log-init --create-home --home-dir /home/wos wos \
    && mkdir -p /data \
    && chown wos:wos /data
COPY . .

ENV API_HOST=0.0.0.0 \
    API_PORT=8000 \
    DATABASE_PATH=/data/database.sqlite \
    PREFECT_HOME=/data/prefect \
    STATE_DIR=/data/state \
    IMAGE_DIR=/data/images \
    UPLOAD_DIR=/data/uploads \
    LOG_FORMAT=json

USER 10001
EXPOSE 8000 4200
VOLUME ["/data"]

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('API_PORT', '8000'), timeout=4)"

CMD ["python", "start_service.py"]
