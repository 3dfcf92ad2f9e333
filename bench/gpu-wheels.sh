#!/usr/bin/env bash
# The wheels of the service's dependencies that the GPU machine's image lacks (it has torch,
# numpy, pillow, prometheus-client, httpx, uvloop, pytest ...), for its Python 3.12 on x86-64,
# at this environment's versions, into .whl/ (git-ignored), where bench/gpu.sh installs them
# from; then what `bash bench/gpu.sh OUT learn` needs beside them into .carry/
# (`python -m bench.gpu_carry`: the loss network, a painting, photos). Run it where pip can
# download and ../shared/data is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
names="annotated-types fastapi httptools isal opentelemetry-api pydantic pydantic-core
  pydantic-settings python-dotenv python-multipart redis starlette typing-inspection uvicorn
  pytest-asyncio"
for ignored in /.whl/ /.carry/; do
  grep -qx "$ignored" .git/info/exclude || echo "$ignored" >> .git/info/exclude
done
mkdir -p .whl
for name in $names; do
  version=$("$PY" -m pip show "$name" | awk '/^Version:/ {print $2}')
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$name==$version"
done
du -sh .whl
"$PY" -m bench.gpu_carry
