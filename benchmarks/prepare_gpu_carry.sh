#!/usr/bin/env bash
# Prepares the git-ignored .gpu/ folder that benchmarks/gpu_ladder.sh needs on a machine with no network:
# the sdist's vendored llama.cpp (trimmed to what a CUDA build of llama-bench needs), llama-cpp-python's
# Python files (each build's libllama comes through LLAMA_CPP_LIB_PATH), and perfgate's dependencies as
# wheels for the GPU machine's Python 3.12. Run after `make vendor`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
VENDOR=.cache/llama_cpp_python-0.3.36/vendor
rm -rf .gpu && mkdir -p .gpu/whl .gpu/py
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/whl \
  typer annotated-doc pydantic pydantic-core annotated-types typing-inspection typing-extensions rich \
  markdown-it-py mdurl pygments shellingham sqlalchemy alembic mako markupsafe pyyaml gguf tqdm pandas \
  python-dateutil six diskcache jinja2 requests urllib3 idna certifi charset-normalizer
cp -r "$($PY -c 'import llama_cpp, os; print(os.path.dirname(llama_cpp.__file__))')" .gpu/py/llama_cpp
rm -rf .gpu/py/llama_cpp/lib .gpu/py/llama_cpp/__pycache__
excludes=(build-cpu docs models tests examples benches media tools/ui gguf-py conversion ggml/src/ggml-sycl
          ggml/src/ggml-opencl ggml/src/ggml-vulkan ggml/src/ggml-webgpu ggml/src/ggml-cann ggml/src/ggml-hexagon)
tar -czf .gpu/llama.cpp-src.tar.gz -C "$VENDOR" "${excludes[@]/#/--exclude=llama.cpp/}" llama.cpp
du -sh .gpu
