# parley-base: the edge, ASR (faster-whisper) and TTS (Kokoro) on Ray's CUDA image.
# Runs the KubeRay head, the CPU `edge` group, and is the parent of the llm and moshi images.
#
#   docker build -f cluster/images/base.Dockerfile -t parley-base:0.1.0 .
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

# The CUDA build of the torch version constraints.txt pins (the CPU build is what `make setup` gets).
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

# Created as the image's user (ray): pip builds the package in this directory.
RUN mkdir -p /home/ray/parley
WORKDIR /home/ray/parley
COPY --chown=ray pyproject.toml constraints.txt README.md ./
COPY --chown=ray services ./services
RUN pip install --no-cache-dir "${TORCH_SPEC}" --index-url "${TORCH_INDEX}" \
 && pip install --no-cache-dir -c constraints.txt ".[asr,tts]" \
 && python -c "import faster_whisper, kokoro, services.edge.deployment"

# Serve replicas resolve relative paths here; production model paths are absolute (/models/...).
ENV PYTHONUNBUFFERED=1
