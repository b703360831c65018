"""camserve: Keras image classifiers served with their Grad-CAM evidence."""

__version__ = "0.1.0"
