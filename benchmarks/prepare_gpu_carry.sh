#!/usr/bin/env bash
# Prepares the git-ignored .gpu/ folder that benchmarks/gpu_e2e.sh needs on a machine with no network:
#   .gpu/llama.cpp.git   a bare git repository with one commit per release, tagged v0.3.35 and v0.3.36: the
#                        llama.cpp trees vendored in those llama-cpp-python sdists (trimmed to what a CUDA build
#                        of llama-bench and libllama needs), so perfgate builds them as `source: {git, ref}`
#   .gpu/py/llama_cpp    llama-cpp-python 0.3.36's Python files (the worker loads a built libllama through them)
#   .gpu/debs            Debian's git and make, unpacked where the GPU image lacks them
#   .gpu/whl             perfgate's dependencies that the GPU image lacks, as wheels for its Python 3.12
# Usage: benchmarks/prepare_gpu_carry.sh [RELEASE...]   (default: 0.3.35 0.3.36)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

[ $# -gt 0 ] || RELEASES=(0.3.35 0.3.36)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
rm -rf .gpu/whl .gpu/py .gpu/llama.cpp.git && mkdir -p .gpu/whl .gpu/py

$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/whl \
  pydantic pydantic-core annotated-types typing-inspection sqlalchemy alembic mako greenlet gguf \
  google-re2 plotly ruptures diskcache typing-extensions

# what a CUDA llama-bench + libllama build does not read (the configure step still finds every CMakeLists)
excludes=(docs models tests examples benches media tools/ui gguf-py conversion
          ggml/src/ggml-sycl ggml/src/ggml-opencl ggml/src/ggml-vulkan ggml/src/ggml-webgpu ggml/src/ggml-cann
          ggml/src/ggml-hexagon ggml/src/ggml-musa ggml/src/ggml-zdnn)
repo="$WORK/repo"
git init -q "$repo"
for v in "${RELEASES[@]}"; do
  $PY -m pip download -q --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$v"
  tar -xzf "$WORK/llama_cpp_python-$v.tar.gz" -C "$WORK"
  find "$repo" -mindepth 1 -maxdepth 1 ! -name .git -exec rm -rf {} +
  tar -C "$WORK/llama_cpp_python-$v/vendor/llama.cpp" "${excludes[@]/#/--exclude=./}" --exclude=./.git -cf - . \
    | tar -C "$repo" -xf -
  git -C "$repo" add -A
  git -C "$repo" -c user.name=perfgate -c user.email=perfgate@localhost commit -q \
    -m "llama.cpp vendored in llama-cpp-python $v"
  git -C "$repo" tag "v$v"
  PY_FILES="$WORK/llama_cpp_python-$v/llama_cpp"  # the bindings of the newest release travel
done
cp -r "$PY_FILES" .gpu/py/llama_cpp
git clone -q --bare "$repo" .gpu/llama.cpp.git
git -C .gpu/llama.cpp.git gc -q --aggressive
mkdir -p .gpu/debs && (cd .gpu/debs && apt-get download -q git make 2>/dev/null) || echo "no apt-get: git and make must be on the GPU machine"
du -sh .gpu/*
