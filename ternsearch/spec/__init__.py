"""Sweep and train files: YAML loading that keeps lines (``yamlsrc``), the strict models and parameter checks
(``sweepfile``), the one search-space compiler (``space``) and configs in words (``describe``). Torch- and
Ray-free: ``ternsearch validate`` and the sweep's first checks import only this."""
