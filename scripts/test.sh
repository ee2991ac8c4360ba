#!/usr/bin/env bash
# Install pyllm with its test extras into the active Python environment and run the test suite.
# torch==2.13.0 is installed first so nothing pulls a multi-GB CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
# Editable, so the tests import the installed build even when run from the source tree.
python -m pip install -q -e ".[test]"
python -m pytest -q -p no:cacheprovider "$@"
