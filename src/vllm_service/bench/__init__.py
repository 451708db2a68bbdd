"""The benchmark suite: load generation, measures, reports (``vllm-service bench``)."""
