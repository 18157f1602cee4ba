"""The search's records: written to MLflow while it runs, read back afterwards.

Written: `mlflow_writer` (the Tune callback that mirrors every trial into MLflow) with
`run_fields` (what a run records), `plots` and `ranks` (the files of a finished search).
Read: `mlflow_reader` (leaderboard rows, Pareto flags), `pareto` (fronts, hypervolume),
`tables` (what the terminal shows), `report_page` (`raysearch report`), `export_trial`
(`raysearch export`) and `score_trial` (`raysearch evaluate`, which scores with the worker's
trainables/evaluation.py)."""
