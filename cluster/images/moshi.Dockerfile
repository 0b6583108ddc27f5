# parley-moshi: parley-llm plus Moshi (duplex speech), for the RayService's `moshi` worker group.
# It holds every stage, so the cascade (asr, tts and vLLM) can share a GPU with a Moshi replica as
# the packing plans put it (cluster/gpu-plans.yaml). moshi 0.2.13 declares pins (torch<2.10,
# huggingface-hub<1.0) that its code does not need: it is installed as the Makefile does, its
# requirements from the `moshi` extra, then moshi itself without its pins; the development
# environment runs it that way next to transformers 5 and huggingface-hub 2. No constraints file
# here: vLLM's resolution in the parent image stands, and the import check proves both load.
#
#   docker build -f cluster/images/moshi.Dockerfile -t parley-moshi:0.1.0 .
ARG BASE_IMAGE=parley-llm:0.1.0
FROM ${BASE_IMAGE}

WORKDIR /home/ray/parley
RUN pip install --no-cache-dir ".[moshi]" \
 && pip install --no-cache-dir --no-deps "moshi==0.2.13" \
 && python -c "import moshi.models, vllm, services.moshi.deployment, services.llm.deployment, services.edge.deployment"
