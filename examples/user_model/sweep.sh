#!/usr/bin/env bash
# The one command: IndRNN (this package) against rnnsweep's LSTM, two widths each, on
# character-level language modelling, trained and timed; results in ./mlflow.db.
# Run it from this directory, so that `mymodels` is importable by every trial.
set -euo pipefail
cd "$(dirname "$0")"
# The checkout's venv when there is one (README's set-up), else $PYTHON, else python3:
# a bare `python` is missing or the wrong interpreter unless a venv is activated.
PYTHON="${PYTHON:-$(if [ -x ../../.venv/bin/python ]; then echo ../../.venv/bin/python; else echo python3; fi)}"
exec "$PYTHON" -m rnnsweep -m --config-dir conf \
  model=indrnn,lstm model.hidden_size=64,128 task=char_lm steps=30 seq_len=50 "$@"
