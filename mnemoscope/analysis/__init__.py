"""Measurements of a finished study's models and of studies side by side: the analysis of `study.py
analyze` (analyze), context use through training (growth), the scaling laws, `study.py compare`."""
