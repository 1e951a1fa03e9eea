"""Experiment scripts: turn configs and protocols into runs, and runs into tables (`python -m experiments.<name>`)."""
