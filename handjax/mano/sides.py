"""Building a mirrored (left from right, or right from left) MANO model."""
from __future__ import annotations

import jax.numpy as jnp

from handjax.mano.model import ManoModel

_M = jnp.array([-1.0, 1.0, 1.0])


def mirror_model(model: ManoModel, official_shapedirs_bug: bool = False) -> ManoModel:
    """The mirror image (x -> -x) of a model, with the other ``side``.

    Under M = diag(-1, 1, 1) a pose R maps to M R M, so pose-corrective entry
    (j, r, c) of (R - I) changes sign by m_r m_c and a vertex offset's
    component d by m_d. Faces get reversed winding so normals face outwards.
    ``official_shapedirs_bug=True`` keeps the shapedirs unmirrored, as the
    official MANO_LEFT.pkl ships them; ``apply_left_shapedirs_fix`` undoes it.
    """
    sign_pose = (_M[:, None] * _M[None, :]).reshape(9)  # m_r m_c, row-major
    posedirs = model.posedirs.reshape(model.posedirs.shape[:2] + (-1, 9)) * sign_pose
    posedirs = posedirs.reshape(model.posedirs.shape) * _M[None, :, None]
    shapedirs = model.shapedirs if official_shapedirs_bug else model.shapedirs * _M[None, :, None]
    aa_sign = jnp.tile(jnp.array([1.0, -1.0, -1.0]), 15)
    return model.replace(
        v_template=model.v_template * _M,
        shapedirs=shapedirs,
        posedirs=posedirs,
        faces=model.faces[:, ::-1],
        hands_components=model.hands_components * aa_sign,
        hands_mean=model.hands_mean * aa_sign,
        side="left" if model.side == "right" else "right",
    )
