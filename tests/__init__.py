"""attreg's test suite (a regular package, so that ``tests.conftest`` is this one even
when an installed distribution ships a top-level ``tests`` package, as plottable, a
dependency of the [scib] extra, does)."""
