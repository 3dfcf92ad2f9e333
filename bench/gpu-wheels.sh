#!/usr/bin/env bash
# The wheels of the service's dependencies that the GPU machine's image lacks (it has torch,
# numpy, pillow, prometheus-client, httpx, uvloop, pytest ...), for its Python 3.12 on x86-64,
# at this environment's versions, into .whl/ (git-ignored), where bench/gpu.sh installs them
# from. Run it where pip can download.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
names="annotated-types fastapi httptools isal opentelemetry-api pydantic pydantic-core
  pydantic-settings python-dotenv python-multipart redis starlette typing-inspection uvicorn
  pytest-asyncio"
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for name in $names; do
  version=$("$PY" -m pip show "$name" | awk '/^Version:/ {print $2}')
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$name==$version"
done
du -sh .whl
