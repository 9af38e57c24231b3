"""The frozen VGG16 base: what it is (spec and fingerprint), where its weights come from, and
the Keras model.

- :mod:`~pipeline.backbone.spec` (no TensorFlow): :class:`BackboneSpec` from a configuration,
  its :class:`Fingerprint`, the decode options;
- :mod:`~pipeline.backbone.weights` (no TensorFlow): the weight sources and their files;
- :mod:`~pipeline.backbone.model` (TensorFlow): the frozen base and the feature extractor.

Importing this package imports no TensorFlow; only ``model`` does. The VGG16 facts themselves
(layer names, shapes, weight addresses) are in :mod:`pipeline.vgg16`.
"""

from .spec import BackboneSpec, Fingerprint, backbone_spec, decode_options
from .weights import WeightsSource, resolve_weights

__all__ = ["BackboneSpec", "Fingerprint", "WeightsSource", "backbone_spec", "decode_options",
           "resolve_weights"]
