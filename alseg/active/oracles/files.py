"""The files oracle: a package per case for a person (:mod:`alseg.active.annotation`), then the
label maps back; only the selected items' voxels are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from alseg.active.annotation import CaseRequest, case_masks, presegment, read_case_label, write_package
from alseg.active.oracles.base import Annotation, ModelSource, OracleContext
from alseg.active.oracles.patches import PatchOracle
from alseg.active.rundir import RunDir
from alseg.data.pool import Pool
from alseg.dataset.io import IMAGE_SUFFIXES
from alseg.dataset.raw import CaseFiles, DatasetInfo, read_dataset
from alseg.errors import AlsegError
from alseg.plans.models import Plans

__all__ = ["DatasetCases", "FilesOracle"]


class DatasetCases:
    """A training case's files in the dataset the plan was made from (the package copies them);
    the dataset is read on the first call."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._dataset: DatasetInfo | None = None

    def __call__(self, case_id: str) -> CaseFiles:
        if self._dataset is None:
            self._dataset = read_dataset(self.root)
        try:
            return self._dataset.case(case_id)
        except KeyError:
            raise AlsegError(
                f"has no training case '{case_id}' any more — resume with the dataset the run was made from",
                self.root / "dataset.json",
            ) from None


class FilesOracle:
    """A package per case for a person (:mod:`alseg.active.annotation`), then the label maps back.

    Per case with selected items: the image in its own geometry, the pre-segmentation of the
    model that selected the batch (rounds >= 1), the region of the items, and ``label.nii.gz``
    to save. A label map is checked against the image, mapped to the plan's grid as the plan
    maps labels, and only the items' boxes are kept. A round whose folder is in the patches
    layout (made before the package per case existed) is imported in that layout.
    """

    name = "files"
    reveals_ground_truth = False
    waits_for_person = True

    @classmethod
    def build(cls, ctx: OracleContext) -> "FilesOracle":
        ws = ctx.workspace
        case_files = DatasetCases(ws.plans.dataset_root)
        return cls(ctx.run, ctx.pool, ws.properties, case_files, ws.plans, ctx.config_name, PatchOracle.build(ctx))

    def __init__(
        self,
        run: RunDir,
        pool: Pool,
        properties: Callable[[str], dict],
        case_files: Callable[[str], CaseFiles],
        plans: Plans,
        config_name: str,
        patches: PatchOracle,
    ):
        self.run = run
        self.pool = pool
        self.properties = properties
        self.case_files = case_files
        self.plans = plans
        self.config_name = config_name
        self.patches = patches
        self._waiting_cases: list[str] = []

    @property
    def labels(self) -> dict[int, str]:
        return self.plans.labels

    def folder(self, round_: int) -> Path:
        return self.run.annotate_dir(round_)

    def guide(self, round_: int) -> Path:
        """The file that tells the person what to do."""
        package = self.run.package(round_)
        return package.manifest if package.is_patch_layout() else package.readme

    def waiting_cases(self) -> list[str]:
        """Cases of the last :meth:`annotate` with no label file yet (named in the CLI's message)."""
        return list(self._waiting_cases)

    def _by_case(self, indices: np.ndarray) -> dict[str, dict[int, object]]:
        by_case: dict[str, dict[int, object]] = {}
        for i in sorted(int(i) for i in indices):
            by_case.setdefault(self.pool[i].case_id, {})[i] = self.pool[i]
        return by_case

    def export(self, round_: int, indices: np.ndarray, model: ModelSource = None) -> Path:
        """Write round ``round_``'s package; ``model`` gives the pre-segmentations (None: none)."""
        record = self.run.load_round(round_)  # the selection: why each item was chosen
        recorded = dict(zip(record.selected, record.scores)) if record is not None else {}
        requests = [
            CaseRequest(
                self.case_files(case_id),
                self.properties(case_id),
                items,
                scores={item.id: recorded.get(item.id) for item in items.values()},
            )
            for case_id, items in self._by_case(indices).items()
        ]
        module = model() if model is not None else None
        predict = None if module is None else (lambda case: presegment(module, case))
        package = self.run.package(round_)
        resampling = self.plans.configuration(self.config_name).resampling
        write_package(
            package,
            round_,
            requests,
            self.labels,
            resampling,
            predict,
            strategy=record.strategy if record is not None else None,
        )
        return package.folder

    def annotate(self, round_: int, indices: np.ndarray, model: ModelSource = None) -> Annotation:
        package = self.run.package(round_)
        if package.is_patch_layout():
            return self.patches.annotate(round_, indices)
        if not package.manifest.is_file():
            self.export(round_, indices, model)
        masks: dict[int, np.ndarray] = {}
        problems: list[str] = []
        waiting: list[int] = []
        self._waiting_cases = []
        for case_id, items in self._by_case(indices).items():
            found = package.label_candidates(case_id, IMAGE_SUFFIXES)
            if not found:
                strays = package.stray_files(case_id, IMAGE_SUFFIXES)
                if strays:  # annotated, but saved under another name
                    problems.append(
                        f"{strays[0]}: is not a name alseg reads — save the label map of case {case_id} as "
                        f"{package.label(case_id).name} in the same folder"
                    )
                    continue
                self._waiting_cases.append(case_id)
                waiting.extend(items)
                continue
            if len(found) > 1:
                names = ", ".join(p.name for p in found)
                problems.append(
                    f"{package.case_dir(case_id)}: holds {len(found)} label files ({names}) — keep only "
                    f"{package.label(case_id).name}"
                )
                continue
            props = self.properties(case_id)
            try:
                label = read_case_label(found[0], props, self.labels)
            except AlsegError as e:
                problems.append(str(e))
                continue
            masks.update(case_masks(label, props, self.plans, self.config_name, items))
        return Annotation(masks, problems, waiting)
