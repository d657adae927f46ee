"""Video files: encoding, decoding, probing, normalisation and sidecar annotations."""
