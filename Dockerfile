# The service image: API, worker and one-shot migration all run from it (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# PyTorch's CPU wheel first, from PyTorch's CPU index: a bare `torch` from PyPI is a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

COPY pyproject.toml README.md alembic.ini ./
COPY agent ./agent
COPY service ./service
COPY simulator ./simulator
COPY migrations ./migrations
RUN pip install . && useradd --create-home --uid 10001 dqfd
USER dqfd

EXPOSE 8000
# Serve on every interface inside the container; compose publishes the port on the host's loopback only.
ENV DQFD_HOST=0.0.0.0 DQFD_PORT=8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["python", "-m", "service", "serve"]
