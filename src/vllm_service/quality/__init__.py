"""The quality evaluator: scores (quality/scores.py, quality/dimensions.py), content classes,
offline evaluation (`vllm-service eval`), the live shadow gate and A/B tests."""
