# Shared by start.sh and test.sh: `ensure_venv FILE...` creates .venv with Python >= 3.11 if
# missing and (re)installs the given requirement files whenever their content changed.
ensure_venv() {
  if [ ! -x .venv/bin/python ]; then
    local py=""
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
      [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 || continue
      if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        py=$candidate; break
      fi
    done
    [ -n "$py" ] || { echo "Python 3.11 or newer is required" >&2; exit 1; }
    "$py" -m venv .venv
  fi
  local want have
  want=$(cat "$@" | sha256sum | cut -d' ' -f1)
  have=$(cat .venv/.requirements.sha 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    echo "Installing requirements into .venv ..." >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    for f in "$@"; do .venv/bin/python -m pip install -q --disable-pip-version-check -r "$f"; done
    echo "$want" > .venv/.requirements.sha
  fi
}
