"""Play the person behind ``alseg loop --oracle files`` with label files alseg never saw.

For each case of an annotation package (``RUN/annotate/round_XXX/manifest.json``), copy that
case's label map from a folder of hidden labels to ``cases/<case>/label.nii.gz`` — exactly what a
person saves after correcting the pre-segmentation. alseg keeps only the voxels of the requested
region, so the rest of the hidden label never reaches the run. Used for the README's
walkthrough and for real-data runs with the labels hidden (``../shared/data`` stays untouched:
copy its images, keep its ``labelsTr`` aside as the hidden folder).

    python examples/script_annotator.py HIDDEN_LABELS_DIR RUN/annotate/round_000
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def annotate(hidden: Path, package: Path) -> int:
    manifest = json.loads((package / "manifest.json").read_text())
    for case in manifest["cases"]:
        source = next(iter(sorted(hidden.glob(f"{case['case']}.nii*"))), None)
        if source is None:
            raise SystemExit(f"error: {hidden}: no label file for case {case['case']} — add {case['case']}.nii.gz")
        shutil.copyfile(source, package / case["label"])
    return len(manifest["cases"])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[-1].strip())
    n = annotate(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"annotated {n} case(s) in {sys.argv[2]}")
