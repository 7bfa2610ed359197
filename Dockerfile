# SmileKit app image: the same two steps as the README (scripts/setup, then scripts/serve).
#   docker build -t smilekit . && docker run -p 8080:8080 -v smilekit-data:/data smilekit
FROM python:3.11-slim-bookworm

# PyPI's Linux torch is a CUDA build of several GB: the CPU index gives the same version as a small CPU wheel
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHON=python3

RUN useradd --create-home --uid 1000 smilekit && mkdir -p /data && chown smilekit /data
WORKDIR /srv/smilekit
RUN chown smilekit /srv/smilekit
USER smilekit

# packages first, so code changes do not reinstall torch
COPY --chown=smilekit pyproject.toml README.md ./
COPY --chown=smilekit smilekit ./smilekit
COPY --chown=smilekit scripts ./scripts
# with the PostgreSQL driver: replicas share one PostgreSQL (docker-compose.yml, profile scaled; deploy/kubernetes)
RUN scripts/setup && .venv/bin/python -m pip install -q -e ".[postgres]"

COPY --chown=smilekit voila.json ./
# the page's Voilà template (scripts/serve finds it through JUPYTER_PATH)
COPY --chown=smilekit share/jupyter/voila/templates/smilekit ./share/jupyter/voila/templates/smilekit
COPY --chown=smilekit notebooks/app.ipynb ./notebooks/app.ipynb

# listen on every interface inside the container; feedback goes to the /data volume
ENV SMILEKIT_HOST=0.0.0.0 \
    SMILEKIT_PORT=8080 \
    SMILEKIT_DB_URL=sqlite:////data/feedback.db \
    JUPYTER_RUNTIME_DIR=/tmp/jupyter-runtime
VOLUME /data
EXPOSE 8080
# a static file: asking for the page itself would start a kernel every 30 s
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD .venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/voila/static/voila.js', timeout=4)"
CMD ["scripts/serve"]
