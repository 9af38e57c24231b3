"""stages.yaml -> typed, frozen sections, validated once at the edge of the program.

What it offers: :func:`load_config` (a file and ``--set`` overrides -> :class:`PipelineConfig`),
:func:`parse_config` (a document already read), :func:`load_cache_config` (only the ``cache``
section, for commands that must work while the data folder is missing), and the section
classes. Every problem is a :class:`~pipeline.errors.ConfigError` naming the file and the key.
Nothing here imports TensorFlow.

Modules: ``document`` (the whole file, loading, error wording), ``sections`` (data, backbone,
cache, extract, runs, cluster), ``heads`` (stages.heads), ``endtoend`` (augmentation,
augmented copies, finetune, scratch).
"""

from .document import (
    NO_DEFAULT,
    RENAMED_KEYS,
    PipelineConfig,
    StagesConfig,
    apply_override,
    check_heads_read_what_is_cached,
    current_key,
    key_default,
    load_cache_config,
    load_config,
    parse_config,
)
from .endtoend import AugmentConfig, AugmentedCopiesConfig, FinetuneConfig, ScratchConfig
from .heads import DenseParams, HeadConfig, HeadsConfig, IncrementalConfig, SweepConfig
from .sections import (
    OUTPUT,
    SPLITS,
    BackboneConfig,
    CacheConfig,
    ClusterConfig,
    DataConfig,
    ExtractConfig,
    ProbeConfig,
    RunsConfig,
    SplitConfig,
)

__all__ = ["OUTPUT", "RENAMED_KEYS", "SPLITS", "AugmentConfig", "AugmentedCopiesConfig",
           "BackboneConfig", "CacheConfig", "ClusterConfig", "DataConfig", "DenseParams",
           "ExtractConfig", "FinetuneConfig", "HeadConfig", "HeadsConfig", "IncrementalConfig",
           "PipelineConfig", "ProbeConfig", "RunsConfig", "ScratchConfig", "SplitConfig",
           "StagesConfig", "SweepConfig", "apply_override", "check_heads_read_what_is_cached",
           "NO_DEFAULT", "current_key", "key_default", "load_cache_config", "load_config",
           "parse_config"]
