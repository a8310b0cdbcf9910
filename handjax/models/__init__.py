"""Network modules (backbones, heads)."""
from handjax.models.resnet import (
    CONV_IMPLS,
    RESNET_SPECS,
    BasicBlock,
    Bottleneck,
    ResNet,
    TorchBatchNorm,
    TorchConv,
    max_pool_3x3_s2,
)
from handjax.models.winograd import winograd_conv3x3

__all__ = ["CONV_IMPLS", "RESNET_SPECS", "BasicBlock", "Bottleneck", "ResNet", "TorchBatchNorm", "TorchConv",
           "max_pool_3x3_s2", "winograd_conv3x3"]
