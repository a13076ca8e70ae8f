"""Running a recipe: plan → generate → judge → the run folder (runner, finalize, the run
folder's files and caches in store, its summary tables, provenance)."""
