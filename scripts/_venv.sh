# Shared by scripts/*: create .venv with Python >= 3.11 and install the project into it.
# Re-running is cheap: pip only installs what changed.

ensure_venv() {
  local extras="${1:-}"
  local python="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || { echo "aiml needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
    "$python" -m venv .venv
  fi
  local target="."
  if [ -n "$extras" ]; then target=".[$extras]"; fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$target"
}
