# Sourced by the launch scripts: create or reuse .venv in the repo root and install the pinned
# environment once (a stamp keyed on setup.cfg + pyproject.toml + constraints.txt skips the
# install on repeat runs). Expects the repo root as the working directory.
ensure_venv() {
  local py
  py="$(command -v python3.11 || command -v python3)"
  [[ -x .venv/bin/python ]] || "$py" -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
  python -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
    || { echo "mogao_jax needs Python >= 3.10" >&2; exit 1; }
  # $1: the extras to install (default "test"); the test script adds torch,hf for the
  # checkpoint-conversion parity tests. One stamp per extras set, so local.sh and test.sh do
  # not undo each other's.
  local extras="${1:-test}" want
  local stamp=".venv/.mogao_jax_install.${extras//,/-}"
  want="$(cat setup.cfg pyproject.toml constraints.txt | sha256sum)"
  want="${want%% *}"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    python -m pip install -q -c constraints.txt -e ".[$extras]"
    echo "$want" > "$stamp"
  fi
}
