"""Reading finished run folders: the HTML report and its figures, comparisons, JailbreakBench
export and the CI regression gate (rundir reads the folders; nothing here runs a model)."""
