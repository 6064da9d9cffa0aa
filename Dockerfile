# rcvcore dashboard image (CPU by default).
#
#   docker build -t rcvcore .                                   # CPU wheels of torch (small)
#   docker build -t rcvcore:cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   # CUDA 12.8 wheels
#   docker run --rm -p 127.0.0.1:8501:8501 -v rcv-data:/data \
#       -e RCV_DASHBOARD_PASSWORD='a long passphrase' rcvcore                 # http://127.0.0.1:8501
#   docker run --rm --gpus all -p 127.0.0.1:8501:8501 -v rcv-data:/data \
#       -e RCV_DASHBOARD_PASSWORD='a long passphrase' -e RCV_DATA_ROOT=/data/datasets rcvcore:cuda
#
# Inside the container the server listens on 0.0.0.0 (that is how a published port reaches it),
# so it runs in served mode (README "Serving the dashboard"): it refuses to start without a
# password (RCV_DASHBOARD_PASSWORD, 12+ characters, or a secrets.toml mounted at
# /opt/rcvcore/.streamlit/secrets.toml), shows no error details, limits runs and uploads, and its
# path fields only reach RCV_DATA_ROOT (unset: embedded demos and uploads only). The -p
# 127.0.0.1:... above also keeps it reachable from this machine only. ImageNet weights: mount or
# copy them into /data/torch/hub/checkpoints/ (TORCH_HOME=/data/torch); without them the
# dashboard works on the embedded demo data with random weights.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RCV_RUNS_DIR=/data/runs \
    RCV_CACHE_DIR=/data/cache \
    TORCH_HOME=/data/torch \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/rcvcore
COPY requirements.txt ./
# torch/torchvision come from TORCH_INDEX_URL (local versions such as 2.14.1+cpu satisfy the pins)
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -r requirements.txt

COPY pyproject.toml README.md ./
COPY rcvcore ./rcvcore
COPY app ./app
COPY .streamlit ./.streamlit
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 rcv \
    && mkdir -p /data && chown rcv:rcv /data

USER rcv
VOLUME ["/data"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"
# app.serve = streamlit run app/main.py + the start checks and enforced settings (app/serve.py)
CMD ["python", "-m", "app.serve", "--server.address=0.0.0.0", "--server.port=8501"]
