"""Plotting only: figures built from analysis results."""
