"""A study: its config and plan of runs, the run queue and its workers, a finished run's row and
files, the runner, Optuna tuning."""
