"""Dagster orchestration: thin assets, resources, sensors and jobs over the library."""
