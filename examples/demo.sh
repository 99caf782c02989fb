#!/usr/bin/env bash
# The main job: record a small training run into a local repository, then look at it and get
# its best checkpoint back. Runs in a scratch project directory so it leaves nothing behind.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/mlvc-demo.XXXXXX")"
cp "$here/train_demo.py" "$work/"
cd "$work"
echo "== project: $work"
mlvc init
echo "== training (every epoch is a checkpoint)"
python train_demo.py --epochs 6
echo "== mlvc ls"
mlvc ls
exp="$(mlvc ls -q | head -n 1)"
echo "== mlvc show $exp"
mlvc show "$exp"
echo "== mlvc checkout $exp -o restored --all   (its best checkpoint, with the code it ran)"
mlvc checkout "$exp" -o restored --all
ls -l restored/outputs
cmp restored/train_demo.py train_demo.py && echo "code snapshot restored byte for byte"
echo "== mlvc stats"
mlvc stats
echo "== done: the repository is $work/.mlvc"
