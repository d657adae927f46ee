"""Tracked object masks: from sidecar annotations or Grounding-DINO + SAM 2."""
