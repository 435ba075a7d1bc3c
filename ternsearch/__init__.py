"""ternsearch: hyperparameter search for ternary networks on Ray Tune. Layers, lowest first: ``errors``,
``spec``, ``results``, ``tracking``, ``report``, ``run``, ``cli`` (README, "Layout")."""
