"""The embedded profile's stand-ins: tiny models and a CPU editing backend, all built offline.

Production profiles name real checkpoints under ``models.*`` and a generative ``pairs.backend``;
the embedded profile (the CPU demo, the tests) has neither, so it runs what this package builds:
tiny models in the real formats (Grounding-DINO + SAM 2, the LLaVA instructor, the CLIP reward
model, the HunyuanVideo VAE, SDXL-style diffusers pipelines) loaded through the same
``from_pretrained`` paths, and :class:`~.opencv_backend.OpenCVBackend`, classical OpenCV
operations in place of inpainting and restyling models. Production code reaches this package
only where a ``models.*`` entry is null or ``pairs.backend`` is ``opencv``; it may draw on the
demo world (:mod:`viva_pipelines.demo_world`), which production code never imports.
"""
