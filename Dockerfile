# The Cycles server image: `cycles serve` against an external PostgreSQL
# (CYCLES_DATABASE_URL; the embedded cluster is not used in a container).
#
#   docker build -t cycles-authority .
#   docker run -e CYCLES_DATABASE_URL=postgresql://... -e CYCLES_ADMIN_API_KEY=... -p 7878:7878 cycles-authority
#   docker run ... cycles-authority worker      # webhook delivery + maintenance, no HTTP
#
# The project is installed editable from /opt/cycles: the server reads sql/
# and migrations/ beside app/, so the source tree is the installation.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /opt/cycles

COPY pyproject.toml README.md ./
COPY sdk/ sdk/
COPY app/ app/
COPY sql/ sql/
COPY migrations/ migrations/
RUN python -m venv /opt/venv \
    && pip install ./sdk -e . \
    && python -c "import app.main, cycles_sdk" \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/cycles --create-home cycles

USER cycles

# In a container the server listens on every interface; the data directory
# only holds a generated admin key when CYCLES_ADMIN_API_KEY is not set.
ENV CYCLES_HOST=0.0.0.0 \
    CYCLES_PORT=7878 \
    CYCLES_DATA_DIR=/var/lib/cycles

EXPOSE 7878

# Ready = the database answers and its schema is at the migration head.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('CYCLES_PORT', '7878'), timeout=4)"]

ENTRYPOINT ["cycles"]
CMD ["serve"]
