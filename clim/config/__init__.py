"""One config system: typed dataclass defaults (:mod:`.schema`), YAML presets, a YAML file of one's own and
``--set key=value`` overrides (:mod:`.files`). A run resolves it once into the specs each layer receives
(:mod:`clim.specs`). Nothing here imports torch."""

from clim.config.files import PRESET_DIR, check_training, dump_yaml, load_config, parse_overrides, preset_names
from clim.config.schema import (CLUSTERED_SELECTIONS, DEFAULT_K, DEFAULT_NUM_POSITIVES, KMEANS_SEED_LIMIT,
                                MIN_IMAGE_SIZE, MULTICROP_SCALE, REFRESH_SEED_STRIDE, SEED_LIMIT, SMALL_IMAGE_MAX,
                                STRATEGIES, Config, ConfigError, DataConfig, MethodConfig, ModelConfig,
                                TrainConfig, default_num_clusters, uses_small_stem)

__all__ = ["CLUSTERED_SELECTIONS", "DEFAULT_K", "DEFAULT_NUM_POSITIVES", "KMEANS_SEED_LIMIT", "MIN_IMAGE_SIZE",
           "MULTICROP_SCALE", "PRESET_DIR", "REFRESH_SEED_STRIDE", "SEED_LIMIT", "SMALL_IMAGE_MAX", "STRATEGIES",
           "Config", "ConfigError", "DataConfig", "MethodConfig", "ModelConfig", "TrainConfig", "check_training",
           "default_num_clusters", "dump_yaml", "load_config", "parse_overrides", "preset_names", "uses_small_stem"]
