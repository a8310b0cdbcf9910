"""data_pipelines.builtin: config naming, record layout, batching driver and build command of
the rendered datasets, on hand-computed cases and fake renderers (no jax, no dataset build)."""
import dataclasses

import numpy as np
import pytest

from data_pipelines import builtin


def _configs():
    return {"tiny": builtin.SequencesConfig(name="tiny", num_sequences=3, test_sequences=2, frames=4,
                                            image_size=16, annotate_every=3, render_batch=8)}


def test_derive_config_names_sizes_in_declared_order_and_checks_them():
    base = _configs()
    derive = lambda **o: builtin.derive_config(  # noqa: E731
        "demo", base, "tiny", builtin.SEQUENCE_SIZES, builtin.SEQUENCE_SHORT, builtin.SEQUENCE_MINIMUM, o)
    assert derive() is base["tiny"]
    assert derive(frames=4, seed=None) is base["tiny"]  # equal to the base or None: no change
    cfg = derive(seed=3, num_sequences=10, annotate_every="2")
    assert cfg.name == "tiny_n10_seed3_k2"  # SEQUENCE_SIZES order, not the call's
    assert (cfg.num_sequences, cfg.seed, cfg.annotate_every, cfg.frames) == (10, 3, 2, 4)
    assert cfg.description == "tiny with {'seed': 3, 'num_sequences': 10, 'annotate_every': 2}"
    assert base["tiny"].num_sequences == 3  # the base config is not modified
    assert derive(test_sequences=0, seed=7).name == "tiny_nt0_seed7"  # minimum 0 for these two
    with pytest.raises(ValueError, match=r"demo make_config: frames must be >= 1, got 0"):
        derive(frames=0)
    with pytest.raises(ValueError, match=r"demo make_config: seed must be >= 0, got -1"):
        derive(seed=-1)
    with pytest.raises(ValueError, match=r"demo make_config: unknown override\(s\) \['colour'\]; allowed: "):
        derive(colour=1)
    with pytest.raises(ValueError, match=r"unknown demo config 'huge'; known: \['tiny'\]"):
        builtin.derive_config("demo", base, "huge", builtin.SEQUENCE_SIZES, builtin.SEQUENCE_SHORT, {}, {})

    def even(changes):
        if changes.get("image_size", 0) % 2:
            raise ValueError("image_size must be even")

    with pytest.raises(ValueError, match="image_size must be even"):
        builtin.derive_config("demo", base, "tiny", builtin.SEQUENCE_SIZES, builtin.SEQUENCE_SHORT, {},
                              {"image_size": 15}, even)
    assert builtin.derive_config("demo", base, "tiny", builtin.SEQUENCE_SIZES, builtin.SEQUENCE_SHORT, {},
                                 {"image_size": 32}, even).name == "tiny_s32"


def test_record_layout_of_a_sequences_config():
    cfg = _configs()["tiny"]
    assert builtin.annotated_flags(4, 3).tolist() == [True, False, False, True]
    assert builtin.annotated_flags(5, 2).tolist() == [True, False, True, False, True]
    assert builtin.annotated_flags(3, 1).tolist() == [True, True, True]
    assert builtin.split_sequences(cfg, "train") == (3, 0)
    assert builtin.split_sequences(cfg, "test") == (2, 3)
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'val'"):
        builtin.split_sequences(cfg, "val")
    index = builtin.split_index(cfg, "test")
    assert index == {"sequence_id": [3, 3, 3, 3, 4, 4, 4, 4], "frame_index": [0, 1, 2, 3] * 2,
                     "annotated": [True, False, False, True] * 2}
    assert builtin.sequence_index(0, 5, 4, np.ones(4, bool)) == {"sequence_id": [], "frame_index": [],
                                                                  "annotated": []}


def test_stack_sequences_repeats_per_sequence_entries_and_pads_with_the_last_frame():
    seqs = [{"pose": np.arange(3)[:, None] + 10 * s, "colour": np.array([s, -s])} for s in range(2)]
    out = builtin.stack_sequences(seqs, ["pose"], ["colour"], frames=3, batch=8)
    assert out["pose"][:, 0].tolist() == [0, 1, 2, 10, 11, 12, 12, 12]
    assert out["colour"].tolist() == [[0, 0]] * 3 + [[1, -1]] * 5
    assert builtin.stack_sequences(seqs, ["pose"], [], frames=3, batch=6)["pose"].shape == (6, 1)


def test_render_ahead_dispatches_the_next_batch_before_handing_out_the_previous_one():
    events = []

    def jobs():
        for i in range(3):
            events.append(f"sample {i}")
            yield i, {"x": np.full(2, i)}

    def render(scene):
        events.append(f"render {int(scene['x'][0])}")
        return {"y": scene["x"] * 2}

    for meta, scene, rendered in builtin.render_ahead(jobs(), render):
        events.append(f"out {meta}")
        assert isinstance(rendered["y"], np.ndarray) and rendered["y"].tolist() == [2 * meta] * 2
    assert events == ["sample 0", "render 0", "sample 1", "render 1", "out 0", "sample 2", "render 2", "out 1",
                      "out 2"]
    assert list(builtin.render_ahead(iter(()), render)) == []


def test_render_sequences_yields_every_real_frame_in_record_order_with_its_labels():
    cfg = dataclasses.replace(_configs()["tiny"], render_batch=8)  # 2 sequences per batch, 3 train sequences
    batches = []

    def sample(number):
        rng = np.random.default_rng(number)
        return {"pose": rng.normal(size=(4, 48)).astype(np.float32), "betas": np.full((4, 10), number, np.float32),
                "annotated": builtin.annotated_flags(4, 3), "is_right": np.bool_(number % 2 == 0)}

    def render(inputs):
        assert "annotated" not in inputs  # not_rendered entries stay out of the renderer's inputs
        batches.append(len(inputs["pose"]))
        return {"image": inputs["pose"][:, :3] * 2}

    frames = list(builtin.render_sequences(
        cfg, "train", dataset="demo", sequences=(3, 7), sample=sample, per_frame=("pose", "betas", "annotated"),
        per_sequence=("is_right",), not_rendered=("annotated",), labels=("betas", "annotated", "is_right"),
        render=render, finish=lambda f: {"double": f["frame_index"] * 2}))
    assert batches == [8, 8]  # the last batch (one sequence) padded to the compiled size
    assert [k for k, _ in frames] == list(range(12))  # no padding frames, record order
    for key, frame in frames:
        number, t = divmod(key, 4)
        pose = sample(number)["pose"][t]
        assert frame["sequence_id"] == 7 + number and frame["frame_index"] == t
        np.testing.assert_array_equal(frame["mano_pose"], pose)
        np.testing.assert_array_equal(frame["image"], pose[:3] * 2)
        assert frame["betas"][0] == number and bool(frame["is_right"]) == (number % 2 == 0)
        assert bool(frame["annotated"]) == (t in (0, 3)) and frame["double"] == 2 * t


def test_mask_png_and_png_bytes_round_trip():
    import io

    from PIL import Image

    mask = np.zeros((5, 4), bool)
    mask[1:3, 2] = True
    decoded = np.asarray(Image.open(io.BytesIO(builtin.mask_png(mask))))
    assert decoded.dtype == np.uint8 and decoded.tolist() == (mask * 255).tolist()
    rgb = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(builtin.png_bytes(rgb)))), rgb)
    with pytest.raises(ValueError, match="png_bytes: expected uint8, got float32"):
        builtin.png_bytes(rgb.astype(np.float32))


def test_build_command_flags_and_size_errors(tmp_path, capsys):
    from data_pipelines.synthetic_hands import build

    with pytest.raises(SystemExit) as err:
        build.main(["--config", "tiny", "--frames", "0", "--data_dir", str(tmp_path)])
    assert err.value.code == ("python -m data_pipelines.synthetic_hands.build: synthetic_hands make_config: "
                              "frames must be >= 1, got 0")
    with pytest.raises(SystemExit):  # argparse: not a base config
        build.main(["--config", "huge"])
    with pytest.raises(SystemExit):
        build.main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--config", "--data_dir", "--overwrite") + tuple(f"--{k}" for k in builtin.SEQUENCE_SIZES):
        assert flag in out
    assert not list(tmp_path.iterdir())  # nothing was built


def test_get_builder_overrides_need_a_config_name(tmp_path):
    from data_pipelines.two_hands import get_builder, make_config

    builder = get_builder("tiny", str(tmp_path), seed=2)
    assert builder.builder_config.name == "tiny_seed2"
    assert str(builder.data_path) == str(tmp_path / "two_hands" / "tiny_seed2" / "1.0.0")
    with pytest.raises(ValueError, match="two_hands get_builder: give overrides with a config name"):
        get_builder(make_config("tiny"), str(tmp_path), seed=2)
    with pytest.raises(ValueError, match="multiple of 4"):  # the dataset's own check
        make_config("tiny", image_size=30)
