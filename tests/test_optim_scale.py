"""optim.lr_scale: per-parameter-group learning-rate factors (handjax.train.optim.scale_by_path)."""
import ml_collections
import numpy as np
import jax.numpy as jnp
import pytest

from handjax.train.optim import make_optimizer, param_paths, scale_by_path


def _cfg(**rules):
    c = ml_collections.ConfigDict(dict(lr=0.01, schedule="constant", warmup_steps=0, name="adam"))
    if rules:
        c.lr_scale = rules
    return c


def _params():
    return {"head": {"rot": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "rotx": {"kernel": jnp.ones(2)}},
            "body": {"kernel": jnp.ones(4)}}


def test_adam_first_step_scaled_per_group():
    """Adam's first step is -lr * g / (|g| + eps) per entry; the factors multiply it by group (hand-computed)."""
    params = _params()
    grads = {"head": {"rot": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full(3, -3.0)},
                      "rotx": {"kernel": jnp.full(2, 0.5)}},
             "body": {"kernel": jnp.full(4, 1.0)}}
    tx, _ = make_optimizer(_cfg(**{"head/rot": 0.1, "head/rot/bias": 0.0}), 10)
    up, _ = tx.update(grads, tx.init(params), params)
    step = lambda g: -0.01 * g / (abs(g) + 1e-8)  # noqa: E731 (optax.adam's defaults, bias-corrected)
    np.testing.assert_allclose(up["head"]["rot"]["kernel"], 0.1 * step(2.0), rtol=2e-5)
    np.testing.assert_allclose(up["head"]["rot"]["bias"], 0.0, atol=0)  # the longest prefix wins
    np.testing.assert_allclose(up["head"]["rotx"]["kernel"], step(0.5), rtol=2e-5)  # whole components only
    np.testing.assert_allclose(up["body"]["kernel"], step(1.0), rtol=2e-5)


def test_no_rules_is_plain_adam():
    params = _params()
    grads = {"head": {"rot": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full(3, -3.0)},
                      "rotx": {"kernel": jnp.full(2, 0.5)}}, "body": {"kernel": jnp.full(4, 1.0)}}
    tx, _ = make_optimizer(_cfg(), 10)
    up, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(up["head"]["rot"]["bias"], 0.01, rtol=2e-5)


def test_unknown_prefix_names_the_config_key():
    tx, _ = make_optimizer(_cfg(**{"head/nothing": 0.1}), 10)
    with pytest.raises(ValueError, match=r"optim.lr_scale.*'head/nothing'.*\['body', 'head'\]"):
        tx.init(_params())


def test_bad_factor():
    with pytest.raises(ValueError, match="optim.lr_scale"):
        scale_by_path({"head": -1.0})
    with pytest.raises(ValueError, match="optim.lr_scale"):
        scale_by_path({"": 0.5})


def test_param_path_of_nnx_state():
    from flax import nnx

    class M(nnx.Module):
        def __init__(self):
            self.layers = nnx.List([nnx.Linear(2, 2, rngs=nnx.Rngs(0))])

    state = nnx.state(M(), nnx.Param)
    assert sorted(param_paths(state)) == ["layers/0/bias/value", "layers/0/kernel/value"]
