"""Evaluation: ranking metrics, the evaluation of users, the ceiling of generated data, baselines (centralized, ALS/BPR), the membership audit and reports. May import every other common package."""
