# The scoring service. Build after `dvc repro` (the model files are baked in and checked against
# dvc.lock at start), or from a registered version fetched into build/served:
#   docker build -t fraudlab-serve .
#   fraudlab registry fetch prod --out build/served && .ci/build-image . build/served fraudlab-serve:prod
#   docker run --read-only --tmpfs /tmp -v fraudlab-history:/var/lib/fraudlab \
#     -e FRAUDLAB_API_KEYS=... -p 8000:8000 fraudlab-serve
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/fraudlab
COPY requirements.lock pyproject.toml /build/
# fraudlab[serve]'s requirements (pyproject.toml) at the versions that trained (requirements.lock),
# in a layer of their own so that a code change does not reinstall them. A TLS-intercepting
# proxy's CA, if the builder passes one (--secret id=ca,src=...), is used by pip only, never
# written into a layer.
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -c "import tomllib; p = tomllib.load(open('/build/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['serve']))" >/build/serve.txt \
 && /opt/fraudlab/bin/pip install -q -r /build/serve.txt -c /build/requirements.lock
COPY README.md /build/
COPY src /build/src
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    /opt/fraudlab/bin/pip install -q --no-deps /build

FROM ${BASE}
# SERVED: the directory (in the context) holding dvc.lock and models/: the repository's root
# after `dvc repro`, or a registered version fetched by `fraudlab registry fetch`
ARG SERVED=.
ARG MODEL_VERSION=unregistered
ARG MODEL_MD5=unknown
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="fraudlab scoring service" \
      org.opencontainers.image.version="${MODEL_VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.fraudlab.model.version="${MODEL_VERSION}" \
      org.fraudlab.model.md5="${MODEL_MD5}"
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent fraudlab \
 && mkdir -p /var/lib/fraudlab && chown fraudlab /var/lib/fraudlab
COPY --from=build /opt/fraudlab /opt/fraudlab
COPY ${SERVED}/dvc.lock /opt/fraudlab/served/dvc.lock
COPY ${SERVED}/models/model.joblib ${SERVED}/models/serving.json \
     ${SERVED}/models/reference_profile.json /opt/fraudlab/served/models/
ENV PATH=/opt/fraudlab/bin:$PATH PYTHONDONTWRITEBYTECODE=1
USER fraudlab
WORKDIR /opt/fraudlab/served
VOLUME /var/lib/fraudlab
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["fraudlab", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-dvc-status"]
CMD ["--store", "/var/lib/fraudlab/history.db", "--create-store"]
