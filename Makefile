# raysource — the two commands of the README, plus helpers.
#   make demo   set-up included: venv, install, Cassandra jars, local node, the main job
#   make test   set-up included: runs the whole suite against a real Cassandra and real Ray
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: FORCE setup lint demo serve-demo test bench peer-bench cassandra-start cassandra-stop cassandra-status clean

setup: $(VENV)/.installed $(VENV)/.linked

# The project is installed editable in setuptools' strict mode: a link tree under build/ that
# static tools (mypy, IDEs, jedi) read as plain files, where the default mode's import hook is
# invisible to them. The tree links the modules that existed at install time, so it is made
# again whenever a module is added or removed ($(VENV)/.modules, the list of the package
# folders' files, from pyproject's package-dir, changes).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=strict
	$(BIN)/python -c "from raysource.devnode.local_node import LocalCassandra; LocalCassandra().resolve_jars(print)"
	touch $@

ROOMS := $(shell $(PYTHON) -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); \
	print(*sorted({f.split('/')[0] for f in d['tool']['setuptools']['package-dir'].values()}))")

$(VENV)/.modules: FORCE
	@mkdir -p $(VENV)
	@find $(ROOMS) -name '*.py' -not -path '*/__pycache__/*' | sort > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

$(VENV)/.linked: $(VENV)/.installed $(VENV)/.modules
	$(BIN)/pip install -q --no-deps -e . --config-settings editable_mode=strict
	touch $@

FORCE:

# flags pass through, e.g. make demo DEMO_ARGS="--seconds 5 --keep-running"
demo: setup
	$(BIN)/raysource demo $(DEMO_ARGS)

# the seat service over HTTP (Ray Serve + FastAPI): every endpoint once, then exit; drop --demo
# to keep serving (OpenAPI at http://127.0.0.1:8000/docs), e.g. make serve-demo SERVE_ARGS=--replicas=2
serve-demo: setup
	$(BIN)/raysource serve --demo $(SERVE_ARGS)

# ruff (lint + import order + format) and mypy (strict on the engine, see pyproject.toml [tool.mypy])
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The suite runs in two processes (pytest-xdist, whole modules per process, the slow ones
# first): one process left the 2 cores 36% idle (waits on Ray, Cassandra and timers: 1,742
# busy CPU-seconds in 23.3 min), and two fill those gaps. TEST_WORKERS=0 runs it in one.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# every benchmark, then one summary table (headline figure beside its limit or peer, ratio);
# exit 0 only when every benchmark ran; e.g. make bench BENCH_ARGS="--only runtime" or "--tiny"
bench: setup
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# raysource beside Pekko (builds benchmarks/peer with Maven; Java 17 + Maven 3.8), 15-25 min;
# flags pass through, e.g. make peer-bench PEER_ARGS="--rounds 1 --seconds 5"
peer-bench: setup
	cd benchmarks/peer && mvn -q -B package
	$(BIN)/python -m benchmarks.peer.run $(PEER_ARGS)

cassandra-start: setup
	$(BIN)/raysource cassandra start

cassandra-stop: setup
	$(BIN)/raysource cassandra stop

cassandra-status: setup
	$(BIN)/raysource cassandra status

clean:
	rm -rf $(VENV) results .pytest_cache
