"""Draw one case of an annotation package: image, the model's pre-segmentation and the region to annotate.

python examples/package_figure.py RUN/annotate/round_001 docs/figures/annotation_package.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from alseg.dataset.io import read_volume  # noqa: E402


def draw(package: Path, out: Path) -> None:
    cases = json.loads((package / "manifest.json").read_text())["cases"]
    case = max(cases, key=lambda c: len(c["items"]))  # the case with most items shows most
    folder = package / "cases" / case["case"]
    image, _ = read_volume(next(iter(sorted(folder.glob("image*")))))
    image = image[0] if image.ndim == 4 else image
    region, _ = read_volume(folder / "region.nii.gz")
    pre_path = folder / "presegmentation.nii.gz"
    pre = read_volume(pre_path)[0] if pre_path.is_file() else np.zeros_like(region)
    z = int(np.argmax((region > 0).reshape(region.shape[0], -1).sum(axis=1)))  # a slice of the region
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    axes[0].imshow(image[z], cmap="gray")
    axes[0].set_title("image, slice z = %d (original geometry)" % z, fontsize=9)
    axes[1].imshow(image[z], cmap="gray")
    axes[1].imshow(np.ma.masked_equal(pre[z], 0), cmap="autumn", alpha=0.6, vmin=1, vmax=max(2, int(pre.max())))
    axes[1].set_title("pre-segmentation to correct", fontsize=9)
    x = image.shape[2] // 2  # a side view: the selected slices are bands across it
    axes[2].imshow(image[:, :, x], cmap="gray", aspect="auto")
    axes[2].imshow(np.ma.masked_equal(region[:, :, x], 0), cmap="cool", alpha=0.45, aspect="auto")
    axes[2].set_title("region to annotate (side view, x = %d)" % x, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{package.name}: case {case['case']}", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[-1].strip())
    draw(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}")
