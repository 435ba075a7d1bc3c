"""Sweep and train files: YAML loading that keeps lines (``yamlsrc``), the strict models (``models``), the
``search:`` parameters and their conditions (``params``), loading with the whole-file checks (``load``), the one
search-space compiler (``space``) and configs in words (``describe``). Torch- and Ray-free: ``ternsearch
validate`` and the sweep's first checks import only this."""

from ternsearch.spec.load import load_spec, load_train_file
from ternsearch.spec.models import DIST_KINDS, Param, SweepSpec, TrainFile

__all__ = ["DIST_KINDS", "Param", "SweepSpec", "TrainFile", "load_spec", "load_train_file"]
