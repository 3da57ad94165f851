"""dask-kaas benchmarks: each suite measures ratios against a baseline run side by side in the same process."""
