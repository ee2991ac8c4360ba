#!/usr/bin/env bash
# The Ray stage of CI: install the `ray` extra's requirement (Ray Data) into the active virtual
# environment, where pyllm is already installed with its test extra, and run the distributed
# tests on a local two-CPU Ray cluster. A stage of its own so the core install stays free of Ray.
#
#   . .ci-venv/bin/activate && bash scripts/ray_tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  echo "scripts/ray_tests.sh: activate the virtual environment pyllm is installed in first" >&2
  exit 2
fi
# What pyproject.toml's extra asks for (ray = ["ray[data]>=2.50"]). Installing the requirement
# rather than `-e ".[ray]"` leaves the built pyllm (and its torch) as they are.
python -m pip install -q "ray[data]>=2.50"
# Fail here, with the import error, rather than let every Ray test skip.
python -c 'import ray, ray.data; print(f"ray {ray.__version__}")'
python -m pytest -q -p no:cacheprovider tests/test_distributed.py
