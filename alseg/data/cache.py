"""Interim CaseCache over today's cache functions (replaced by the data package's own owner)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from alseg.data.datamodule import list_cases
from alseg.data.preprocess import cache_dir_for, preprocess_dataset


class CaseCache:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._props: dict[str, dict] = {}

    @classmethod
    def of(cls, plan_dir: Path, plans, config: str) -> "CaseCache":
        return cls(cache_dir_for(plan_dir, plans.configuration(config)))

    def case_ids(self) -> list[str]:
        return list_cases(self.folder)

    def image_path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}.npy"

    def label_path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}_seg.npy"

    def image(self, case_id: str) -> np.ndarray:
        return np.load(self.image_path(case_id), mmap_mode="r")

    def label(self, case_id: str) -> np.ndarray:
        return np.load(self.label_path(case_id), mmap_mode="r")[0]

    def properties(self, case_id: str) -> dict:
        if case_id not in self._props:
            self._props[case_id] = json.loads((self.folder / f"{case_id}.json").read_text())
        return self._props[case_id]

    def shape(self, case_id: str) -> tuple[int, int, int]:
        return tuple(self.image(case_id).shape[1:])


def build_cache(plans, config: str, plan_dir: Path, show_progress: bool = True) -> CaseCache:
    return CaseCache(preprocess_dataset(plans, config, plan_dir, show_progress=show_progress))
