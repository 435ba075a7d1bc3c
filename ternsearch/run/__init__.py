"""Running things: ``ternsearch sweep`` (``sweep``), the checks before Ray starts (``preflight``), the Tune objects
(``tuner``, the only module that builds them), failing fast (``failfast``), progress lines (``progress``) and
``ternsearch train`` (``train``)."""
