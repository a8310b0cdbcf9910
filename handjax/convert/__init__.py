"""PyTorch checkpoint conversion: torch-free safe reader, state-dict extraction, declarative mapping."""
from handjax.convert.mapping import (
    MANO_GUARD_PATTERNS,
    MANO_REASON,
    TRANSFORMS,
    ConversionError,
    Ignore,
    MappingReport,
    Rule,
    apply_rules,
    apply_to_model,
    flatten_tree,
)
from handjax.convert.rules_torchvision import torchvision_resnet_rules
from handjax.convert.state_dict import ExtractReport, extract_state_dict
from handjax.convert.torch_reader import (
    CheckpointFormatError,
    InertObject,
    LoadReport,
    PlaceholderWarning,
    load_torch_checkpoint,
)
