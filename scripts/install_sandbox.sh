#!/usr/bin/env bash
# Install bubblewrap (`bwrap`), the isolation tool code grading runs model-written
# programs in (pipeline/tasks/sandbox.py), when it is missing. Idempotent.
# Exit status 0: bwrap is installed; 1: it is missing and could not be installed here
# (not root and no password-less sudo, or no apt-get): the message says what to do.
set -uo pipefail
command -v bwrap >/dev/null 2>&1 && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "bubblewrap is missing and there is no apt-get here: install the package 'bubblewrap' with your package manager" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "bubblewrap is missing and this user cannot install packages: run 'sudo apt-get install bubblewrap'" >&2
  exit 1
fi
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1 \
  || { "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends bubblewrap; } \
  || { echo "apt-get install bubblewrap failed" >&2; exit 1; }
command -v bwrap >/dev/null 2>&1 || { echo "bubblewrap installed but bwrap is not on PATH" >&2; exit 1; }
