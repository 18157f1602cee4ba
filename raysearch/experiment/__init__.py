"""The experiment file, read and checked: what a search will be, before anything starts.

`spec` loads the YAML into `sections`' pydantic models (`problems` names what is wrong),
`space` turns `search.space` into Optuna distributions, `checks` validates what needs the
whole file, `comparison` designs a `search.compare` study, and `preflight` (with
`model_probe`, the driver's one probe into the worker's model code) checks the file against
this machine. `redaction` keeps secrets out of what is printed, logged and saved."""
