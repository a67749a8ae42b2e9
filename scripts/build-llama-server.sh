#!/usr/bin/env bash
# Builds llama.cpp's C++ llama-server from the llama.cpp sources vendored in the
# MIT-licensed llama-cpp-python sdist, only the llama-server target, CPU only.
# The result is cached outside the checkout, keyed by version, so that only the
# first build on a machine pays for it.
set -euo pipefail

PYTHON="${PYTHON:-$(dirname "$0")/../.venv/bin/python}"
# the version, the build recipe and the cache folder come from modelyard/engines/llamacpp.py, which finds the
# binary at run time: one place decides where it lives (bump BUILD_RECIPE there when the flags below change)
read -r VERSION CACHE_ROOT DEST < <("$PYTHON" -c "from modelyard.engines.llamacpp import LLAMA_CPP_PYTHON_VERSION, \
build_dir, cache_root; print(LLAMA_CPP_PYTHON_VERSION, cache_root(), build_dir())") || true
[ -n "${DEST:-}" ] || { echo "llama-server: cannot import modelyard with $PYTHON; run 'make install' first" >&2; exit 1; }
BIN="$DEST/bin/llama-server"

if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
    echo "llama-server $VERSION: cached at $BIN"
    exit 0
fi

WORK="$CACHE_ROOT/build/llama-cpp-python-$VERSION"
mkdir -p "$WORK"
SDIST="$WORK/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
    echo "llama-server: downloading the llama-cpp-python $VERSION sdist (MIT) ..."
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
        "llama-cpp-python==$VERSION" -d "$WORK" 2>/dev/null \
      || "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
fi
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -d "$SRC" ]; then
    tar -xzf "$SDIST" -C "$WORK"
fi

JOBS="$(nproc 2>/dev/null || echo 2)"
# Not -march=native: on virtual machines that report AMX, ggml's AMX kernels crash (SIGSEGV) at the
# first matmul. A portable x86-64 AVX2/FMA/F16C build runs on any x86_64 server of the last decade.
CPU_FLAGS="-DGGML_NATIVE=OFF"
if [ "$(uname -m)" = "x86_64" ]; then
    CPU_FLAGS="$CPU_FLAGS -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    CPU_FLAGS="$CPU_FLAGS -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    CPU_FLAGS="$CPU_FLAGS -DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF"
fi
echo "llama-server: building the llama-server target with $JOBS jobs (first time only, a few minutes) ..."
START=$(date +%s)
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S "$SRC" -B "$WORK/build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    $CPU_FLAGS \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DHF_ENABLED=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF > "$WORK/cmake-configure.log" 2>&1 \
  || { tail -40 "$WORK/cmake-configure.log"; exit 1; }
cmake --build "$WORK/build" --target llama-server -j "$JOBS" > "$WORK/cmake-build.log" 2>&1 \
  || { tail -40 "$WORK/cmake-build.log"; exit 1; }
mkdir -p "$DEST/bin"
cp "$WORK/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "llama-server $VERSION: built in $(( $(date +%s) - START ))s -> $BIN"
