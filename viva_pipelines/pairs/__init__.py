"""Synthetic edit pairs: generators (remove, add, color, swap, style, tone, hybrid, ref_*)
over pluggable editing backends (OpenCV on CPU, diffusers on GPU)."""
