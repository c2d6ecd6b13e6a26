#!/usr/bin/env bash
# Prepare benchmarks/gpu_check.py for a GPU machine that has no network (issue #18).
#
# Run HERE (a machine whose pip reaches a package index), in any folder of the repository:
#
#     bash benchmarks/gpu_check_prepare.sh [TASK04_DIR]      # default ../shared/data/Task04_Hippocampus
#
# It fills the ignored folder .gpu_check/ (see .gitignore), which the GPU run carries
# (carry: [".gpu_check"]):
#
#   .gpu_check/wheels/alseg/    alseg's dependencies that the GPU image lacks (its python3 3.12
#                               holds torch, lightning, numpy, scipy, rich, typer, matplotlib,
#                               scikit-learn, tensorboard; see the device's KINDS.md)
#   .gpu_check/wheels/nnunet/   nnU-Net v2 and what its trainer imports that the image lacks, for the
#                               side comparison; installed into its own --target folder there,
#                               so it never replaces alseg's packages
#   .gpu_check/Task04_Hippocampus/   a copy of the dataset (15 MB)
#
# Wheels larger than 1 MB are re-packed with LZMA instead of deflate (pip installs such a wheel
# unchanged: it reads it with zipfile, and RECORD's hashes are of the unpacked files): SimpleITK
# goes from 52.8 to 28.8 MB. Everything that travels must stay under 64 MiB (the tracked files,
# ~2 MB, included): the script prints the sizes and fails when the total is over.
#
# Variables: PYTHON (an interpreter with pip; default python3), PYVER (the GPU image's Python,
# default 3.12), NO_NNUNET=1 (alseg's wheels only), DEST (default .gpu_check).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PYVER=${PYVER:-3.12}
DEST=${DEST:-.gpu_check}
DATA=${1:-../shared/data/Task04_Hippocampus}
LIMIT=$((64 * 1024 * 1024))

# The versions alseg's own venv and the nnU-Net comparison venv were tested with (2026-12).
ALSEG_WHEELS=(
    monai==1.6.1 nibabel==5.4.2 simpleitk==2.5.7 pydantic==2.14.4 pydantic-core==2.50.5
    annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 submodlib-py==0.0.3
    submitit==1.5.4
)
# What `import nnunetv2.training.nnUNetTrainer.nnUNetTrainer` loads (traced with sys.modules in a
# venv with nnunetv2 2.8.1) less what the GPU image has (pandas, scikit-image, seaborn, tifffile,
# imageio, msgpack, ...) and less SimpleITK and nibabel, which come with alseg's wheels.
NNUNET_WHEELS=(
    nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 batchgenerators==0.25.5
    batchgeneratorsv2==0.3.6 blosc2==4.15.0 ndindex==1.10.1 connected-components-3d==4.1.1
)
NNUNET_BUILT=(acvl-utils==0.2.6)  # a source distribution only: built here into a (pure Python) wheel

PLATFORM=(
    --only-binary=:all: --python-version "$PYVER" --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
)

mkdir -p "$DEST/wheels/alseg"
echo "== alseg's dependencies for Python $PYVER -> $DEST/wheels/alseg"
"$PYTHON" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$DEST/wheels/alseg" "${ALSEG_WHEELS[@]}"

if [[ "${NO_NNUNET:-0}" != 1 ]]; then
    mkdir -p "$DEST/wheels/nnunet"
    echo "== nnU-Net v2 for Python $PYVER -> $DEST/wheels/nnunet"
    "$PYTHON" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$DEST/wheels/nnunet" "${NNUNET_WHEELS[@]}"
    "$PYTHON" -m pip wheel -q --no-deps -w "$DEST/wheels/nnunet" "${NNUNET_BUILT[@]}"
else
    rm -rf "$DEST/wheels/nnunet"
fi

echo "== re-packing wheels over 1 MB with LZMA (once per wheel)"
"$PYTHON" - "$DEST/wheels" <<'EOF'
import os, sys, time, zipfile
from pathlib import Path

for whl in sorted(Path(sys.argv[1]).rglob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        infos = z.infolist()
        if whl.stat().st_size < 1 << 20 or all(i.compress_type == zipfile.ZIP_LZMA for i in infos):
            continue
        t0, before = time.time(), whl.stat().st_size
        tmp = whl.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as out:
            for info in infos:
                out.writestr(info, z.read(info.filename), compress_type=zipfile.ZIP_LZMA)
    os.replace(tmp, whl)
    print(f"  {whl.name}: {before / 1e6:.1f} -> {whl.stat().st_size / 1e6:.1f} MB ({time.time() - t0:.0f} s)")
EOF

if [[ -f "$DATA/dataset.json" ]]; then
    echo "== $DATA -> $DEST/Task04_Hippocampus"
    rm -rf "$DEST/Task04_Hippocampus"
    cp -rL "$DATA" "$DEST/Task04_Hippocampus"
else
    echo "no dataset.json in $DATA: the GPU check will skip its loop row (pass the Task04 folder as the argument)"
fi

echo "== what travels"
du -sh "$DEST"/wheels/* "$DEST"/Task04_Hippocampus 2>/dev/null || true
carried=$(du -sb "$DEST" | cut -f1)
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((carried + tracked + ${untracked:-0}))
awk -v c="$carried" -v t="$tracked" -v u="${untracked:-0}" 'BEGIN { m = 1048576; printf "carried %.1f MiB; tracked files %.1f MiB; untracked, not ignored %.1f MiB; total %.1f MiB of the 64 MiB limit\n", c / m, t / m, u / m, (c + t + u) / m }'
if ((total > LIMIT)); then
    echo "over the 64 MiB limit: rerun with NO_NNUNET=1 (the training row then gives alseg's it/s only)" >&2
    exit 1
fi
echo "ready: run the command in benchmarks/gpu_check.py's docstring with carry [\"$DEST\"]"
