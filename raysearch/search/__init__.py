"""The search, running: Ray started or joined, the Tune search built and run, and what
survives a crash.

`driver` runs one search from a checked experiment (or resumes one), `tuner` builds the
Tune search (OptunaSearch, the early-stopping scheduler, the trial function), `moasha` is
the multi-objective scheduler, `resources` and `cluster` decide where trials run, `ledger`
is the write-ahead record `resume` trusts, `storage` the results folder, `progress` the
live view and `outcome` how the search ended (its exit code)."""
