"""Evaluation: clean and robust metrics, plots and reports."""
