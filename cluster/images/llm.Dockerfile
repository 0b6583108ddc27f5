# parley-llm: parley-base plus vLLM, for the GPU worker group. vLLM ships CUDA-only wheels and
# pins its own torch: it is resolved here on its own pins (not constraints.txt), then an import
# check proves the stages installed by the base image still load against it.
#
#   docker build -f cluster/images/llm.Dockerfile -t parley-llm:0.1.0 .
ARG BASE_IMAGE=parley-base:0.1.0
FROM ${BASE_IMAGE}

ARG VLLM_SPEC=vllm>=0.11
WORKDIR /home/ray/parley
RUN pip install --no-cache-dir ".[llm-vllm]" "${VLLM_SPEC}" \
 && python -c "import vllm, faster_whisper, kokoro, services.llm.deployment"
