# parley-llm: parley-base plus vLLM, for the GPU worker group (the edge, asr, tts and llm
# applications share its GPUs). vLLM ships CUDA-only wheels pinned to one torch version: build the
# base image with that version (--build-arg TORCH_SPEC=torch==X) when it is not the one
# constraints.txt pins, or pip stops here on the conflict rather than swapping torch under the
# other stages. vLLM resolves its own dependencies (not constraints.txt, which was frozen on a
# CPU machine without it); the import check proves every stage still loads next to it.
#
#   docker build -f cluster/images/llm.Dockerfile -t parley-llm:0.1.0 .
ARG BASE_IMAGE=parley-base:0.1.0
FROM ${BASE_IMAGE}

ARG VLLM_SPEC=vllm>=0.11
WORKDIR /home/ray/parley
RUN pip install --no-cache-dir ".[llm,llm-vllm]" "${VLLM_SPEC}" \
 && python -c "import vllm, faster_whisper, kokoro, services.llm.deployment, services.edge.deployment"
