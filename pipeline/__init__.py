"""A staged pipeline: frozen VGG16 features extracted once into a content-addressed cache.

Importing ``pipeline`` does not import TensorFlow; only the stages that run the backbone do.
"""

__version__ = "0.1.0"
