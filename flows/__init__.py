"""Wiring of the stages: Prefect flows, the genesis setup, and the `shoal` command line.

Flows hold no business logic of their own: they call plain functions from registry/, serve/,
traces/, curate/ and train/. This package is also the only place that reads environment variables
(`flows.config`).
"""
