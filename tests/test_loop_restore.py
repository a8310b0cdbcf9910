"""``restore_model`` reads a stage's trainable split from its checkpoint.

A train checkpoint stores the ``Task.trainable`` variables as "params" and the others as "rest".
These tests train a tiny model (Linear -> BatchNorm -> head) through ``handjax.train.loop.train``
with only the head trainable, restore it into a fresh model (another seed) WITHOUT passing the
filter and compare every leaf; a checkpoint written directly with the train-state layout
(``init_state`` + ``Checkpointer.save``, what ``train`` writes) restores the same way; a model
that does not fit is a ValueError naming the checkpoint and the path.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from handjax.train.checkpoint import Checkpointer
from handjax.train.loop import Task, init_state, restore_model, saved_trainable, train
from test_preemption import SliceIter, make_cfg

HEAD_ONLY = nnx.All(nnx.Param, nnx.PathContains("head"))


class Net(nnx.Module):
    def __init__(self, rngs, head: int = 1, head_name: str = "head"):
        self.l1 = nnx.Linear(4, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.5, rngs=rngs)
        setattr(self, head_name, nnx.Linear(8, head, rngs=rngs))
        self.head_name = head_name

    def __call__(self, x):
        return getattr(self, self.head_name)(nnx.relu(self.bn(self.l1(x))))


def loss_fn(model, batch, rng):
    del rng
    loss = jnp.mean((model(batch["x"]) - batch["y"]) ** 2)
    return loss, {"mse": loss}


def leaves(model) -> dict:
    """'path/to/variable' -> numpy value, for every variable of ``model``."""
    return {"/".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model))}


def assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def head_only_run(tmp_path_factory):
    """(workdir, initial leaves, trained leaves) of 2 steps of ``Net`` with only the head trainable."""
    work = str(tmp_path_factory.mktemp("head_only"))
    model = Net(nnx.Rngs(0))
    initial = leaves(model)
    train(Task(model, loss_fn, trainable=HEAD_ONLY), SliceIter(), make_cfg(2, 2), work, name="tiny")
    return work, initial, leaves(model)


def test_head_only_stage_restores_without_its_filter(head_only_run):
    work, initial, trained = head_only_run
    # the run trained what the filter says: the head moved, l1 / bn parameters did not, bn statistics did
    assert not np.allclose(trained["head/kernel"], initial["head/kernel"])
    for k in ("l1/kernel", "l1/bias", "bn/scale", "bn/bias"):
        np.testing.assert_array_equal(trained[k], initial[k], err_msg=k)
    assert not np.allclose(trained["bn/mean"], initial["bn/mean"])

    fresh = Net(nnx.Rngs(7))  # another seed: every leaf differs from the run's before restoring
    assert all(not np.array_equal(leaves(fresh)[k], trained[k]) for k in ("l1/kernel", "head/kernel"))
    assert restore_model(fresh, work) == 2
    assert_same(leaves(fresh), trained)


def test_saved_trainable_is_the_stage_filter(head_only_run):
    work, _, _ = head_only_run
    ckpt = Checkpointer(f"{work}/checkpoints", async_save=False)
    try:
        saved = ckpt.saved_tree(2)
    finally:
        ckpt.close()
    model = Net(nnx.Rngs(0))
    flt = saved_trainable(saved["params"], saved["rest"])
    picked = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, flt))}
    expected = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, HEAD_ONLY))}
    assert picked == expected == {"head/kernel", "head/bias"}
    # a parameter the checkpoint does not know (another config's model) goes where the default split puts it,
    # so a mismatch is reported as a missing "params" entry
    model.extra = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    picked = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, flt))}
    assert picked == {"head/kernel", "head/bias", "extra/kernel", "extra/bias"}


def test_explicit_filter_still_accepted_and_checked(head_only_run):
    work, _, trained = head_only_run
    fresh = Net(nnx.Rngs(3))
    assert restore_model(fresh, work, trainable=HEAD_ONLY) == 2
    assert_same(leaves(fresh), trained)
    with pytest.raises(ValueError, match=r"(?s)does not match the model.*params/l1/kernel"):
        restore_model(Net(nnx.Rngs(3)), work, trainable=nnx.Param)  # the filter of another stage


def test_checkpoint_written_with_the_train_state_layout_restores(tmp_path):
    """A step saved directly as ``train`` saves it (init_state + Checkpointer.save): head-only and default split."""
    for name, trainable in (("head_only", HEAD_ONLY), ("default", nnx.Param)):
        source = Net(nnx.Rngs(1))
        _, state = init_state(source, trainable, optax.sgd(0.1))
        ckpt = Checkpointer(str(tmp_path / name / "checkpoints"), async_save=False)
        try:
            ckpt.save(5, jax.tree.map(np.asarray, state))
            ckpt.wait()
        finally:
            ckpt.close()
        fresh = Net(nnx.Rngs(2))
        assert restore_model(fresh, str(tmp_path / name)) == 5, name
        assert_same(leaves(fresh), leaves(source))


def test_model_that_does_not_fit_names_the_path(head_only_run):
    work, _, _ = head_only_run
    with pytest.raises(ValueError, match=r"(?s)checkpoint step 2 in .*checkpoints does not match the model.*"
                                         r"shape \(8, 1\) in the checkpoint, \(8, 3\) in the model: "
                                         r"params/head/kernel"):
        restore_model(Net(nnx.Rngs(0), head=3), work)
    with pytest.raises(ValueError, match=r"(?s)missing from the checkpoint: params/out/kernel.*"
                                         r"not in the model: params/head/kernel"):
        restore_model(Net(nnx.Rngs(0), head_name="out"), work)
