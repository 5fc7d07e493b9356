# The two commands of the README. Each makes the environment it needs on a fresh machine:
# a virtual environment in .venv with the pinned requirements, and this project installed
# into it in editable mode (which gives the `slicer-samba` command). --no-compile: pip would
# byte-compile all of the environment's 17,000 .py files; Python compiles only what it imports.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test env clean

env: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-compile -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-compile --no-deps -e .
	touch $@

demo: $(STAMP)
	YOLO_OFFLINE=true $(VENV)/bin/slicer-samba demo

# Two workers (pytest-xdist), one per core of a small machine; a test file stays in one worker,
# so its module fixtures are made once. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	YOLO_OFFLINE=true $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

clean:
	rm -rf $(VENV) out .pytest_cache
