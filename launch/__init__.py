"""Launcher: `python -m launch` builds and runs the training commands; no training logic here."""
