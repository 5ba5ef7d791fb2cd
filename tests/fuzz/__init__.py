"""Property-based fuzzing of the loader, the control-plane API and a real gateway process.

`make test` runs every target with a small, derandomized budget (profile `ci`); `make fuzz`
runs the same targets with `HYPOTHESIS_PROFILE=fuzz` (10,000 cases each by default,
`WH_FUZZ_EXAMPLES=N` to change it). See tests/fuzz/budget.py.
"""
