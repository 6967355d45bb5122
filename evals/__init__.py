"""featurelm's offline eval suite: datasets of cases, assertion types, the runner, reports,
comparison, and record/replay of backend exchanges. The CLI entry points are in `evals.cli`."""
