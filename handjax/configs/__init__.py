"""Config builders shared by the files in ``configs/`` (importable, unlike those files)."""
