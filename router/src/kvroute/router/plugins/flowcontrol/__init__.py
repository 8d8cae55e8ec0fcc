"""Flow-control policies: the ceilings up to which each priority band may fill the pool."""
