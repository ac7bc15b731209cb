# One image for both services: `boilerhouse api` and `boilerhouse aggregator` (see compose.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# rclone: the sync coordinator runs it for tenant data.
RUN apt-get update \
 && apt-get install -y --no-install-recommends rclone ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install . && rm -rf /src

RUN useradd --system --uid 10001 --create-home --home-dir /home/boilerhouse boilerhouse \
 && mkdir -p /data && chown boilerhouse:boilerhouse /data
USER boilerhouse
WORKDIR /data

EXPOSE 8080 9464
CMD ["boilerhouse", "--help"]
