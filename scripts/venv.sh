# Shared by start.sh and test.sh: `ensure_venv FILE...` creates .venv with Python >= 3.11 if
# missing and (re)installs each given requirement file whenever its content changed.
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
  local f want stamp
  for f in "$@"; do  # one stamp per file: start.sh and test.sh ask for different sets
    want=$(sha256sum "$f" | cut -d' ' -f1)
    stamp=".venv/.installed-$(basename "$f").sha"
    if [ "$want" != "$(cat "$stamp" 2>/dev/null || true)" ]; then
      echo "Installing $f into .venv ..." >&2
      .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
      .venv/bin/python -m pip install -q --disable-pip-version-check -r "$f"
      echo "$want" > "$stamp"
    fi
  done
}
