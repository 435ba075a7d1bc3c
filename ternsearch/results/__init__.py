"""A sweep's results directory: its file names and readers (``files``), the Tune callback that writes them
(``recorder``), where outputs may go (``outputs``) and the best trial as a train config (``export``)."""
