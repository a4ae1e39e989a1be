"""Training one model: the Lightning module and fit (train), atomic checkpoints and graceful stops,
the trackers of --logger (loggers), the callbacks."""
