"""denoisebench: train one denoising autoencoder in PyTorch and TensorFlow and compare them."""
