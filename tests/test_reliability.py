"""Bad input and broken checkpoints: every entry point refuses with one line naming the file
(and the episode and field), exit code 2, before any trainer starts and with nothing written."""

import functools
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch

from dtray import checkpoint
from dtray.cli import build_parser, evaluation_config, main
from dtray.config import ActionSampling, Config, DataConfig, ModelConfig
from dtray.data import NormStats, WindowSpec
from dtray.errors import DtrayError
from dtray.format import episodes_to_table, write_dataset
from dtray.policy import load_policy
from tests.test_validate import BOX_INFO, DISCRETE_INFO, make_episodes, write_table


def nan_in(field):
    def build(path):
        episodes = make_episodes(BOX_INFO, count=20)
        getattr(episodes[7], field).reshape(-1)[1] = np.nan
        write_table(path, episodes_to_table(episodes, BOX_INFO))
    return build


def ragged(path):
    episodes = make_episodes(BOX_INFO)
    episodes[1].actions = episodes[1].actions[:-1]
    write_table(path, episodes_to_table(episodes, BOX_INFO))


def empty_episode(path):
    table = episodes_to_table(make_episodes(BOX_INFO, count=2), BOX_INFO)
    empty = {name: pa.array([[]], table.schema.field(name).type) for name in ("observations", "actions", "rewards")}
    row = pa.table({"episode_id": pa.array([9], pa.int64()), **empty, "terminated": [False], "truncated": [True],
                    "final_observation": pa.array([[0.0, 0.0, 0.0]], pa.list_(pa.float32()))})
    write_table(path, pa.concat_tables([table, row.cast(table.schema)]))


def out_of_bounds(path):
    episodes = make_episodes(BOX_INFO)
    episodes[3].actions[1] = 2.5
    write_table(path, episodes_to_table(episodes, BOX_INFO))


def discrete_out_of_range(path):
    episodes = make_episodes(DISCRETE_INFO)
    episodes[2].actions[4] = 2
    write_table(path, episodes_to_table(episodes, DISCRETE_INFO))


def wide_observations(path):
    write_dataset(make_episodes(BOX_INFO), BOX_INFO, path)
    wide = type(BOX_INFO)("Pendulum-v1", __import__("gymnasium").spaces.Box(-8.0, 8.0, (4,), np.float32),
                          BOX_INFO.action_space)
    table = episodes_to_table(make_episodes(wide, first_id=10), wide)
    write_table(path, table.replace_schema_metadata({b"dtray": BOX_INFO.to_json().encode()}), "part-00001.parquet")


def missing_column(path):
    write_table(path, episodes_to_table(make_episodes(BOX_INFO), BOX_INFO).drop_columns(["rewards"]))


def text_rewards(path):
    table = episodes_to_table(make_episodes(BOX_INFO), BOX_INFO)
    index = table.schema.get_field_index("rewards")
    write_table(path, table.set_column(index, "rewards", table.column("rewards").cast(pa.list_(pa.string()))))


def duplicate_ids(path):
    write_dataset(make_episodes(BOX_INFO), BOX_INFO, path)
    write_table(path, episodes_to_table(make_episodes(BOX_INFO, first_id=3), BOX_INFO), "part-00001.parquet")


def other_metadata(path):
    write_dataset(make_episodes(BOX_INFO), BOX_INFO, path)
    other = type(BOX_INFO)(BOX_INFO.env_id, BOX_INFO.observation_space, BOX_INFO.action_space, ref_max_score=-1.0)
    write_table(path, episodes_to_table(make_episodes(other, first_id=10), other), "part-00001.parquet")


def not_parquet(path):
    write_dataset(make_episodes(BOX_INFO), BOX_INFO, path)
    (path / "part-00001.parquet").write_bytes(b"PAR1 this is not a parquet file")


BAD_DATASETS = {  # name: (builder, what the one line says)
    "nan reward": (nan_in("rewards"), "episode 7: field 'rewards': 1 NaN/inf values"),
    "nan observation": (nan_in("observations"), "episode 7: field 'observations': 1 NaN/inf values"),
    "nan action": (nan_in("actions"), "episode 7: field 'actions': 1 NaN/inf values"),
    "ragged episode": (ragged, "episode 1: field 'actions': 4 steps but 'rewards' has 5"),
    "empty episode": (empty_episode, "episode 9: field 'rewards': empty episode (0 steps)"),
    "box action outside bounds": (out_of_bounds, "episode 3: field 'actions': 1 steps outside the Box bounds"),
    "discrete action outside range": (discrete_out_of_range, "episode 2: field 'actions': 1 steps outside"),
    "observation wider than the space": (wide_observations, "episode 10: field 'observations': step 0 has 4 values"),
    "missing column": (missing_column, "missing column(s): rewards"),
    "rewards of the wrong type": (text_rewards, "field 'rewards': type list<string>"),
    "duplicate episode ids": (duplicate_ids, "episode 3: field 'episode_id': duplicate id"),
    "metadata differs across files": (other_metadata, "metadata differs from"),
    "a file that is not parquet": (not_parquet, "part-00001.parquet: not a readable Parquet file"),
}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dtray: error: "), err
    return err[0]


@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_inspect_refuses_each_malformed_dataset_with_one_line(case, tmp_path, capsys):
    build, message = BAD_DATASETS[case]
    build(tmp_path / "ds")
    assert main(["inspect", str(tmp_path / "ds")]) == 2
    assert message in one_error_line(capsys)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_train_refuses_each_malformed_dataset_before_a_trainer_starts(case, ray_local, tmp_path, capsys):
    build, message = BAD_DATASETS[case]
    build(tmp_path / "ds")
    runs = tmp_path / "runs"
    code = main(["train", f"data.paths=[{tmp_path / 'ds'}]", f"run.storage_path={runs}", "train.max_steps=5"])
    assert code == 2
    line = one_error_line(capsys)
    assert message in line and str(tmp_path / "ds") in line
    assert not runs.exists()  # no run directory, no checkpoint: nothing half-written


def test_convert_writes_nothing_when_an_episode_is_bad(tmp_path):
    """Writers check every episode before the dataset appears (the rename comes last)."""
    episodes = make_episodes(BOX_INFO)
    episodes[2].rewards[0] = np.inf
    with pytest.raises(DtrayError, match=r"minari:demo: episode 2: field 'rewards': 1 NaN/inf values"):
        write_dataset(episodes, BOX_INFO, tmp_path / "out", source="minari:demo")
    assert list(tmp_path.iterdir()) == []


# --- checkpoints ----------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    """A small checkpoint written the way training writes it."""
    config = Config(data=DataConfig(context_len=4, max_ep_len=20), model=ModelConfig(embed_dim=16, n_layer=1))
    model = checkpoint.build_model(config, BOX_INFO)
    stats = NormStats((0.0,) * 3, (1.0,) * 3, 1, 10, 0, 0, -1.0, 0.0, -0.5, 0.1, {"0.5": -0.5}, 0.0, 0.0)
    spec = WindowSpec(4, 20, 1.0, 1.0, stats.state_mean, stats.state_std)
    state = {"step": 3, "optimizer": torch.optim.AdamW(model.parameters()).state_dict()}
    return checkpoint.save(tmp_path / "ckpt", model, config, BOX_INFO, spec, stats, state, {"loss": 1.0})


def test_evaluate_acts_as_the_checkpoint_s_run_config_says_unless_told_otherwise(saved):
    """Without --config, a checkpoint trained to sample (CartPole's config) is evaluated
    sampling; overrides and flags still win, and --config replaces it whole."""
    meta = json.loads((saved / "dtray.json").read_text())
    meta["config"]["eval"].update(deterministic=False, temperature=0.8, top_p=0.9, episodes=7)
    (saved / "dtray.json").write_text(json.dumps(meta))
    parse = build_parser().parse_args

    config = evaluation_config(parse(["evaluate", "--checkpoint", str(saved)])).eval
    assert (config.sampling, config.episodes) == (ActionSampling(False, 0.8, 0.9), 7)
    config = evaluation_config(parse(["evaluate", "--checkpoint", str(saved), "--episodes", "3",
                                      "eval.temperature=0.5"])).eval
    assert (config.sampling, config.episodes) == (ActionSampling(False, 0.5, 0.9), 3)
    config = evaluation_config(parse(["evaluate", "--checkpoint", str(saved), "--config", "configs/pendulum.yaml"])).eval
    assert config.sampling == ActionSampling()


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_good_checkpoint_loads(saved):
    assert load_policy(saved).info.env_id == "Pendulum-v1"
    assert checkpoint.load_train_state(saved)["step"] == 3


@pytest.mark.parametrize("damage, message", [
    (lambda d: truncate(d / "model.safetensors"), "model.safetensors: truncated or not a safetensors file"),
    (lambda d: truncate(d / "model.safetensors", 0.001), "model.safetensors: truncated or not a safetensors file"),
    (lambda d: (d / "model.safetensors").unlink(), "model.safetensors: missing"),
    (lambda d: (d / "dtray.json").write_text("{not json"), "dtray.json: corrupt checkpoint metadata"),
    (lambda d: (d / "dtray.json").write_text("{}"), "dtray.json: corrupt checkpoint metadata: KeyError"),
    (lambda d: shutil.rmtree(d), "not a dtray checkpoint (no dtray.json)"),
])
def test_unreadable_checkpoint_files_are_named_in_one_line(saved, damage, message):
    damage(saved)
    with pytest.raises(DtrayError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_policy(saved)


def test_weights_of_another_shape_are_refused(saved):
    meta = json.loads((saved / "dtray.json").read_text())
    meta["config"]["model"]["embed_dim"] = 32  # the weights are d=16
    (saved / "dtray.json").write_text(json.dumps(meta))
    with pytest.raises(DtrayError, match=r"model.safetensors: weights do not fit the model of dtray.json: size mismatch"):
        load_policy(saved)


def test_weights_with_other_keys_are_refused(saved):
    meta = json.loads((saved / "dtray.json").read_text())
    meta["config"]["model"]["n_layer"] = 2  # the weights have one block
    (saved / "dtray.json").write_text(json.dumps(meta))
    with pytest.raises(DtrayError, match=r"model.safetensors: weights do not fit the model of dtray.json \(missing"):
        load_policy(saved)


def test_a_checkpoint_of_another_format_version_is_refused(saved):
    meta = json.loads((saved / "dtray.json").read_text())
    meta["format_version"] = 99
    (saved / "dtray.json").write_text(json.dumps(meta))
    with pytest.raises(DtrayError, match="checkpoint format 99 was written by an incompatible dtray version"):
        load_policy(saved)


def test_format_1_is_read_unless_its_model_has_a_return_head(saved):
    """Version 2 changed only what a return head's R̂ token embeds: other version-1 models act
    as they did, a return-head one would act differently and is refused."""
    meta = json.loads((saved / "dtray.json").read_text())
    meta["format_version"] = 1
    (saved / "dtray.json").write_text(json.dumps(meta))
    load_policy(saved)
    meta["config"]["model"]["return_head"] = True
    (saved / "dtray.json").write_text(json.dumps(meta))
    with pytest.raises(DtrayError, match="a return-head model of checkpoint format 1.*retrain it"):
        checkpoint.read_meta(saved)


@pytest.mark.parametrize("damage", [functools.partial(truncate, keep=0.5), lambda p: p.write_bytes(b"junk")])
def test_a_broken_training_state_is_named(saved, damage):
    damage(saved / "train_state.pt")
    with pytest.raises(DtrayError, match="train_state.pt: truncated or not a training state written by dtray"):
        checkpoint.load_train_state(saved)


def test_evaluate_on_a_broken_checkpoint_exits_with_one_line(saved, capsys):
    truncate(saved / "model.safetensors")
    assert main(["evaluate", "--checkpoint", str(saved)]) == 2
    assert "model.safetensors: truncated or not a safetensors file" in one_error_line(capsys)


@pytest.mark.slow
def test_tune_refuses_a_malformed_dataset_once_before_any_trial(ray_local, tmp_path):
    import yaml

    from dtray.tune import run_search

    nan_in("rewards")(tmp_path / "ds")
    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump({"base": {"overrides": {"data.paths": [str(tmp_path / "ds")]}},
                                      "search_space": {"train.lr": {"choice": [1e-3, 1e-4]}},
                                      "storage_path": str(tmp_path / "runs")}))
    with pytest.raises(DtrayError, match=r"part-00000.parquet: episode 7: field 'rewards': 1 NaN/inf values"):
        run_search(search)
    assert not (tmp_path / "runs").exists()
