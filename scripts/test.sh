#!/usr/bin/env bash
# Set up and run the test suite (the command README.md documents; .ci/run calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[test]"
python -m pytest -q "$@"
