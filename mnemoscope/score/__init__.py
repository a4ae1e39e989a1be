"""`study.py score`: models trained elsewhere loaded (models), paired across tokenizers on the
bytes both scored (pairs), measured into a study-like folder (scoring)."""
