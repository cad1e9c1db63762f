#!/usr/bin/env bash
# Create .venv and install the project with its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! command -v java >/dev/null 2>&1; then
  echo "setup: Java 17+ is required for Spark (on Debian: apt-get install openjdk-17-jre-headless)" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # Spark ALS solves its normal equations with the system's LAPACK (Java code without one).
  # OpenBLAS's single-threaded build fits 15-25 % faster than the reference LAPACK; its
  # threaded build made fits 3x slower, each of Spark's tasks starting threads for all cores.
  if ! dpkg -s libopenblas0-serial >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq libopenblas0-serial >/dev/null) \
      || echo "setup: could not install libopenblas0-serial; Spark will use its Java LAPACK" >&2
  fi
  # A threaded OpenBLAS, where installed, ranks above the serial one: choose the serial one.
  for library in libblas.so.3 liblapack.so.3; do
    name="$library-$(uname -m)-linux-gnu"
    serial=$(update-alternatives --list "$name" 2>/dev/null | grep openblas-serial || true)
    if [ -n "$serial" ]; then update-alternatives --set "$name" "$serial" >/dev/null; fi
  done
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# pyspark builds from its source package on first install: a few minutes, once.
.venv/bin/python -m pip install --quiet -e ".[pipeline,test]"
echo "setup: .venv ready ($(.venv/bin/python --version))"
