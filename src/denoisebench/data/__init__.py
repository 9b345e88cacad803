"""Images on disk: EuroSAT (zip, folder, TFDS), the built-in and synthetic sets, the split."""
