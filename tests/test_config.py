"""params.yaml -> typed config: schema, overrides and the error messages users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from humo.config import ConfigError, Params, SynthConfig, load_params


def test_project_params_load_and_match_schema(params_path: Path) -> None:
    params = load_params(params_path)
    assert isinstance(params, Params)
    assert params.synth.num_frames % 4 == 1
    assert isinstance(params.paths.raw, Path)


def test_override_is_parsed_with_schema_types(params_path: Path) -> None:
    params = load_params(params_path, [
            "synth.num_clips=8",
            "synth.num_train_identities=2",
            "synth.num_heldout_identities=1",
            "synth.heldout_fraction=0.5",
            "paths.raw=/tmp/x",
        ],)
    assert params.synth.num_clips == 8 and isinstance(params.synth.num_clips, int)
    assert params.synth.heldout_fraction == 0.5
    assert params.paths.raw == Path("/tmp/x")


def test_override_typo_names_key_and_allowed_keys(params_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_params(params_path, ["synth.num_clip=8"])
    message = str(info.value)
    assert "'num_clip'" in message and "num_clips" in message and "Allowed keys" in message


def test_override_unknown_section(params_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'synthh'.*Did you mean 'synth'"):
        load_params(params_path, ["synthh.seed=1"])


@pytest.mark.parametrize("bad", ["synth.num_clips", "=3", "synth.seed.deeper=1"])
def test_malformed_override(params_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError):
        load_params(params_path, [bad])


def test_override_value_of_wrong_type(params_path: Path) -> None:
    with pytest.raises(ConfigError, match="synth.num_clips"):
        load_params(params_path, ["synth.num_clips=many"])


def test_typo_in_file_names_key_and_allowed_keys(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("synth:\n  num_clipz: 3\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert "synth.num_clipz" in message and "num_clips" in message


@pytest.mark.parametrize(
    "text, fragment",
    [("synth: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "mapping of sections"), ("synth:\n  num_clips: -4\n", "num_clips")],
)
def test_malformed_files(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_params(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("")
    assert load_params(path) == Params()


def test_sections_are_frozen(params_path: Path) -> None:
    params = load_params(params_path)
    with pytest.raises(Exception):
        params.synth.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [{"num_frames": 32}, {"height": 60}, {"num_clips": 4, "num_train_identities": 4, "num_heldout_identities": 2}],
)
def test_synth_cross_field_checks(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SynthConfig(**kwargs)


def test_sharded_weights_do_not_combine_with_fp8_or_offload() -> None:
    from humo.config import GenerateConfig

    with pytest.raises(ValueError, match="shard_dit .* does not combine with memory.weight_storage='fp8'"):
        GenerateConfig.model_validate({"parallel": {"shard_dit": True}, "memory": {"weight_storage": "fp8"}})
    with pytest.raises(ValueError, match="memory.offload_blocks=4"):
        GenerateConfig.model_validate({"parallel": {"shard_dit": True}, "memory": {"offload_blocks": 4}})
    assert GenerateConfig.model_validate({"parallel": {"shard_dit": True, "sequence_parallel": 2}}).parallel.shard_dit
