"""The VIVA editing model: instructor, editing DiT, codecs, flow-matching and SDE sampling."""
