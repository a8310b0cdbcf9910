"""Network modules (backbones, heads)."""
from handjax.models.resnet import (
    RESNET_SPECS,
    BasicBlock,
    Bottleneck,
    ResNet,
    TorchBatchNorm,
    TorchConv,
    max_pool_3x3_s2,
)

__all__ = ["RESNET_SPECS", "BasicBlock", "Bottleneck", "ResNet", "TorchBatchNorm", "TorchConv", "max_pool_3x3_s2"]
