"""A sweep's results directory: its file names and readers (``files``), the Tune callback that writes them
(``recorder``), how every record is written whole (``atomic``), a torn trials.json rebuilt from the other records
(``rebuild``), where outputs may go (``outputs``) and the best trial as a train config (``export``)."""
