# parley-moshi: parley-base plus Moshi (duplex speech). moshi 0.2.13 pins torch<2.10 but runs on
# 2.13, and its pins exclude vLLM's transformers/huggingface-hub: it gets its own image and worker
# group, installed as the Makefile does (its requirements from the `moshi` extra, then moshi
# itself without its pins).
#
#   docker build -f cluster/images/moshi.Dockerfile -t parley-moshi:0.1.0 .
ARG BASE_IMAGE=parley-base:0.1.0
FROM ${BASE_IMAGE}

WORKDIR /home/ray/parley
RUN pip install --no-cache-dir -c constraints.txt ".[moshi]" \
 && pip install --no-cache-dir --no-deps "moshi==0.2.13" \
 && python -c "import moshi.models, services.moshi"
