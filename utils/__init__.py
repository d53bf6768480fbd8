"""Small helpers shared by the programs, the data pipeline and the evaluation scripts."""
