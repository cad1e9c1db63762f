#!/usr/bin/env bash
# Create .venv and install the project with its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! command -v java >/dev/null 2>&1; then
  echo "setup: Java 17+ is required for Spark (on Debian: apt-get install openjdk-17-jre-headless)" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
   && ! ldconfig -p | grep -q liblapack.so.3; then
  # Native BLAS/LAPACK make Spark ALS faster; without them it falls back to Java code.
  (apt-get update -qq && apt-get install -y -qq libblas3 liblapack3 >/dev/null) \
    || echo "setup: could not install libblas3/liblapack3; Spark will use its Java BLAS" >&2
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# pyspark builds from its source package on first install: a few minutes, once.
.venv/bin/python -m pip install --quiet -e ".[pipeline,test]"
echo "setup: .venv ready ($(.venv/bin/python --version))"
