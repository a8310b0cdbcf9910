"""Network modules (backbones, heads)."""
from handjax.models.resnet import RESNET_SPECS, BasicBlock, Bottleneck, ResNet, TorchBatchNorm

__all__ = ["RESNET_SPECS", "BasicBlock", "Bottleneck", "ResNet", "TorchBatchNorm"]
