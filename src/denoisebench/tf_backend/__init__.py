"""The TensorFlow side: the Keras model built from the spec, and the MirroredStrategy / MultiWorkerMirroredStrategy trainer."""
