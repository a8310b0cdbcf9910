"""The ImageNet normalisation the data pipelines apply (``data_pipelines.transforms``), undone for the
systems whose upstream networks take other inputs: one place for the constants and the inverse."""
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def from_imagenet(images: jnp.ndarray, offset: float = 0.0) -> jnp.ndarray:
    """ImageNet-normalised images (..., 3) -> RGB in [0, 1] (+ ``offset``: -0.5 gives handobjectconsist's
    [-0.5, 0.5] intensities); computed in the images' dtype."""
    mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
    std = jnp.asarray(IMAGENET_STD, images.dtype)
    return images * std + mean + jnp.asarray(offset, images.dtype)
