# Two commands do everything on a machine that has only Python 3.11:
#   make demo   -> create .venv, install, compose the tiny default recipe, then answer, draw and edit
#                  with the shipped tiny checkpoint (writes runs/demo/demo.png)
#   make test   -> create .venv, install (with the example plugin), run the tests
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
DEMO_RECIPE ?= recipes/dualvitok_qwen2_tiny.yaml
DEMO_CHECKPOINT ?= checkpoints/dualvitok_qwen2_mllm_tiny
PYTEST_ARGS ?=
# a plain path entry in a .pth instead of setuptools' import-hook finder: ~30 ms less start-up per process
EDITABLE := --config-settings editable_mode=compat

.PHONY: install demo test test-slow lint lint-imports data browser clean

$(VENV)/.installed: pyproject.toml constraints.txt examples/illume-kit-fsq-tokenizer/pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt $(EDITABLE) -e '.[test,slurm,metrics,lmms,loggers,serve]'
	$(PIP) install -q -c constraints.txt $(EDITABLE) -e examples/illume-kit-fsq-tokenizer
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST ships as a Debian package; the tests that read it skip when it is absent.
data:
	@if command -v dpkg >/dev/null && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "note: could not install dataset-fashion-mnist"; \
		else echo "note: run 'sudo apt-get install dataset-fashion-mnist' for the Fashion-MNIST tests"; fi; fi

# Debian's chromium for the `serve` page test (driven by playwright, which downloads no browser of its own);
# the test skips when /usr/bin/chromium is absent.
browser:
	@if command -v dpkg >/dev/null && ! dpkg -s chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) || echo "note: could not install chromium"; \
		else echo "note: run 'sudo apt-get install chromium' for the serve page test"; fi; fi

demo: install
	$(VENV)/bin/illume-kit compose $(DEMO_RECIPE)
	$(PY) examples/demo.py $(DEMO_CHECKPOINT) --image checkpoints/scene.png -o runs/demo/demo.png

# style (ruff lint + format, configured in pyproject.toml) and the import contracts
lint: lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the import contracts in pyproject.toml ([tool.importlinter]): layers point one way, core stays torch-free
lint-imports: install
	$(VENV)/bin/lint-imports --no-cache

test: install data
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-slow: install data browser
	$(PY) -m pytest -q -p no:cacheprovider -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
