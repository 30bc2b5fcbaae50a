# genjobs: one server replica. Build: docker build -t genjobs .
# Run (embedded database in the /data volume):
#   docker run -p 50051:50051 -p 9464:9464 -v genjobs-data:/data genjobs
# With a real MongoDB: -e GENJOBS_MONGODB_URI='mongodb://db1,db2,db3/?replicaSet=rs0' -e GENJOBS_AUTH_SECRET=...
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY server server
COPY client client
RUN python -m pip install .

RUN useradd --system --uid 10001 --home-dir /data --create-home genjobs
USER genjobs

ENV GENJOBS_HOST=0.0.0.0 \
    GENJOBS_PORT=50051 \
    GENJOBS_METRICS_PORT=9464 \
    GENJOBS_DATA_DIR=/data \
    GENJOBS_LOG_FORMAT=json
VOLUME /data
EXPOSE 50051 9464
# The gRPC health service: SERVING while the database answers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-m", "genjobs.server.runtime.probe"]
STOPSIGNAL SIGTERM
CMD ["genjobs-server"]
