"""Scoring and metrics: official ASVspoof 5 metrics, score files, DET plots, calibration, split scoring."""
