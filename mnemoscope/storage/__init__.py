"""The storage layer: every file of a study folder is read and written here. Atomic writes (files),
older layouts read as the current one (migrations), a run's folder (RunFolder) and a study's
(StudyFolder)."""
