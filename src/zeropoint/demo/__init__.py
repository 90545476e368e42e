"""`zeropoint demo` (the main job) and `zeropoint tour` (tensor-level tour)."""
