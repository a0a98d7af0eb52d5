# The README's two commands: `make run` (set up and run the service) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test browser dicom-peers bench bench-quick setup system-deps demo lint audit docs lock clean

run: setup
	$(VENV)/bin/flaskmodel demo
	$(VENV)/bin/flaskmodel up

test: setup browser dicom-peers lint
	$(PY) -m pytest

# Debian's chromium and chromedriver for the results viewer's browser test.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# The DICOM peers of the tests: Orthanc with its DICOMweb plugin as the hospital PACS, dcmtk's
# storescu/echoscu as the modality.
dicom-peers:
	@{ command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } && \
		[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] && \
		command -v storescu >/dev/null 2>&1 && command -v echoscu >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb dcmtk; }

setup: system-deps $(VENV)/.installed

# redis-server, nginx and dcmtk (storescu: how `make run` suggests sending a study) from
# Debian/Ubuntu packages, and venv support, when missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v storescu >/dev/null 2>&1 || missing="$$missing dcmtk"; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# The whole stack and the dev tools, at the versions in constraints.txt (the tested set).
$(VENV)/.installed: pyproject.toml constraints.txt
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[stack,dev]'
	# The gRPC runtime's TF Serving protos; the package pins the full `tensorflow`, which would
	# replace tensorflow-cpu, so it goes in without its dependencies (grpcio and protobuf come
	# with tensorflow-cpu).
	$(PY) -m pip install -q -c constraints.txt --no-deps tensorflow-serving-api
	touch $@

# Pin what is installed now (after the tests passed with it) as the tested set.
lock: setup
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# The benchmark (wrk from Debian/Ubuntu packages); writes var/bench/report.md.
bench: setup
	command -v wrk >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(VENV)/bin/flaskmodel bench $(BENCH_FLAGS)

bench-quick:
	$(MAKE) bench BENCH_FLAGS=--quick

demo: setup
	$(VENV)/bin/flaskmodel demo

lint: setup
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests
	$(PY) -m mypy

# Known vulnerabilities in the installed packages (pip-audit; needs the package index's
# vulnerability data or OSV online, so it is not part of `make test`). --strict fails when any
# package could not be checked, rather than report a clean audit of nothing. Each waiver is an
# `--ignore-vuln <id>` here and a row in docs/security.md's "Dependency audit" table.
AUDIT_WAIVERS :=
audit: setup
	$(VENV)/bin/pip-audit --strict --skip-editable --progress-spinner off $(AUDIT_WAIVERS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# Regenerate the configuration table of docs/configuration.md from Settings.
docs: setup
	$(PY) -c 'import re, pathlib; from flaskmodel.settings import settings_table; p = pathlib.Path("docs/configuration.md"); s = p.read_text(); p.write_text(re.sub(r"(<!-- settings-table -->\n).*?(<!-- /settings-table -->)", lambda m: m.group(1) + settings_table() + m.group(2), s, flags=re.S))'
