"""Editing videos on request, outside training: batches of stored requests."""
