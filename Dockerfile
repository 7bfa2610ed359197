# SmileKit app image: the same two steps as the README (scripts/setup, then scripts/serve).
#   docker build -t smilekit . && docker run -p 8080:8080 -v smilekit-data:/data smilekit
# The app image serves with onnxruntime and has no torch (about 0.6 GB); the full image adds the "learn" extra
# (torch, for the saliency view and for training inside the container):
#   docker build --build-arg SMILEKIT_EXTRAS=learn,postgres -t smilekit-full .
# Build arguments for machines that cannot reach the defaults (scripts/container build sets them; docs/serving.md):
#   BASE_IMAGE           a Debian-like image with Python >= 3.11 and its venv module (default the official slim Python)
#   PIP_EXTRA_INDEX_URL  the PyTorch CPU index by default (PyPI's Linux torch is a CUDA build of several GB); empty
#                        for none: pip would otherwise retry an unreachable index for every package
#   PIP_FIND_LINKS       wheels to install from: a URL, or a folder mounted into the build (podman build -v)
#   PIP_INDEX_URL        another package index
ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- build: the virtual environment, then what serving does not use is taken out of it -----------------------------
FROM ${BASE_IMAGE} AS build
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
ARG PIP_INDEX_URL=https://pypi.org/simple
# with the PostgreSQL driver: replicas share one PostgreSQL (docker-compose.yml, profile scaled; deploy/kubernetes)
ARG SMILEKIT_EXTRAS=postgres
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHON=python3

RUN useradd --create-home --uid 1000 smilekit
WORKDIR /srv/smilekit
RUN chown smilekit /srv/smilekit
USER smilekit

# the pinned packages first, from pyproject.toml alone, so a change to the code does not download them again
COPY --chown=smilekit pyproject.toml ./
RUN "$PYTHON" -m venv .venv && .venv/bin/python -m pip install -q --upgrade pip \
    && .venv/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in '$SMILEKIT_EXTRAS'.split(',') if e]; \
print('\n'.join(p['dependencies'] + [r for e in extras for r in p['optional-dependencies'][e]]))" >/tmp/requirements.txt \
    && .venv/bin/python -m pip install -q -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY --chown=smilekit README.md ./
COPY --chown=smilekit smilekit ./smilekit
COPY --chown=smilekit scripts ./scripts
RUN scripts/setup --serve && .venv/bin/python -m pip install -q -e ".[$SMILEKIT_EXTRAS]"
# Not used by a served app (about 90 MB): jedi and parso (IPython's completion, which IPython does without),
# debugpy (the kernel's debugger, which ipykernel does without), the packages' own test suites, and pip and
# setuptools themselves (a change of packages is a new image)
RUN .venv/bin/python -m pip uninstall -q -y jedi parso debugpy setuptools pip \
    && find .venv/lib -depth -type d -name tests -exec rm -rf {} +

# -- the image: the base, the environment and the app -----------------------------------------------------------
FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 1000 smilekit && mkdir -p /data && chown smilekit /data
WORKDIR /srv/smilekit
COPY --from=build --chown=smilekit /srv/smilekit /srv/smilekit
USER smilekit
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
# a static file: asking for the page itself would start a kernel every 30 s. On the port the app listens on
# (docker run -e SMILEKIT_PORT=...).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD .venv/bin/python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['SMILEKIT_PORT'] + '/voila/static/voila.js', timeout=4)"
CMD ["scripts/serve"]
