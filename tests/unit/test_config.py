"""Config loading: recipes, base files, overrides, and errors that name the key and the fix."""

from __future__ import annotations

import typing

import re

import pytest
import yaml
from pydantic import BaseModel

from nemo_rlvr.config import DEFAULT_RECIPE, REPO_ROOT, ConfigError, RunConfig, commented_yaml, load_config


def test_default_recipe_loads_and_derives_from_base():
    cfg = load_config()
    assert cfg.name == "tiny_cpu"                     # from the recipe
    assert cfg.algorithm.clip_low == 0.2              # from configs/grpo.yaml
    assert cfg.data.source == "arithmetic"


def test_dotted_overrides_are_typed():
    cfg = load_config(DEFAULT_RECIPE, ["learner.lr=1e-6", "algorithm.kl_coef=0.01", "generation.stop=[a, b]",
                                       "cluster.address=null"])
    assert cfg.learner.lr == 1e-6 and isinstance(cfg.learner.lr, float)
    assert cfg.algorithm.kl_coef == 0.01
    assert cfg.generation.stop == ("a", "b")
    assert cfg.cluster.address is None


def test_unknown_key_names_path_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        load_config(DEFAULT_RECIPE, ["learner.lrr=1e-5"])
    msg = str(e.value)
    assert "learner.lrr" in msg and "lr" in msg and "max_tokens_per_microbatch" in msg


def test_wrong_type_and_bad_literal():
    with pytest.raises(ConfigError, match=r"train\.steps='many'"):
        load_config(DEFAULT_RECIPE, ["train.steps=many"])
    with pytest.raises(ConfigError, match=r"algorithm\.kl_estimator='k9'.*'k1', 'k2' or 'k3'"):
        load_config(DEFAULT_RECIPE, ["algorithm.kl_estimator=k9"])


def test_missing_file_and_bad_override_form(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(DEFAULT_RECIPE, ["learner.lr"])


def test_cross_field_check_names_fix():
    with pytest.raises(ConfigError, match="minibatches_per_step=3"):
        load_config(DEFAULT_RECIPE, ["learner.minibatches_per_step=3", "train.prompts_per_step=4",
                                     "algorithm.group_size=4"])


@pytest.mark.parametrize("overrides, needle", [
    (["generation.tensor_parallel_size=2"], "generation.tensor_parallel_size=2 needs generation.backend=vllm"),
    (["generation.tensor_parallel_size=2", "generation.backend=vllm", "cluster.mode=local"],
     "tensor-parallel generators run in Ray placement groups; use cluster.mode=ray"),
    (["generation.weight_transfer=ipc", "generation.backend=vllm"],  # the recipe's placement is split
     "needs generation.backend=vllm, cluster.mode=ray and cluster.placement=colocated (got vllm, ray, split)"),
    (["generation.weight_transfer=nccl"], "needs generation.backend=vllm, cluster.mode=ray and "
                                          "cluster.placement=split (got hf, ray, split)"),
    (["learner.num_workers=2", "cluster.mode=local"], "learner.num_workers=2 with cluster.mode=local"),
])
def test_unsupported_combinations_are_refused_at_load(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(DEFAULT_RECIPE, overrides)
    msg = str(e.value)
    assert needle in msg
    assert "{" not in msg, "the whole config tree leaked into the message"


def test_tensor_parallel_vllm_loads():
    cfg = load_config(DEFAULT_RECIPE, ["generation.tensor_parallel_size=2", "generation.backend=vllm",
                                       "generation.weight_transfer=nccl"])
    assert (cfg.generation.tensor_parallel_size, cfg.generation.weight_transfer) == (2, "nccl")


def test_sharded_learner_loads():
    assert load_config(DEFAULT_RECIPE, ["learner.num_workers=2"]).learner.num_workers == 2


def _models(ann) -> list[type[BaseModel]]:
    """Pydantic models inside an annotation (Model, Model | None, tuple[Model, ...])."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    return [m for arg in typing.get_args(ann) for m in _models(arg)]


def test_every_config_field_has_a_description():
    missing, seen = [], set()
    todo: list[tuple[str, type[BaseModel]]] = [("", RunConfig)]
    while todo:
        prefix, model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, f in model.model_fields.items():
            key = f"{prefix}{name}"
            if not (f.description or "").strip():
                missing.append(key)
            todo += [(f"{key}.", m) for m in _models(f.annotation)]
    assert len(seen) > 10                       # the walk reached the sections
    assert not missing, f"fields without a docstring (add one under the field): {', '.join(sorted(missing))}"


def test_base_is_one_level_deep(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match="one level deep"):
        load_config(tmp_path / "a.yaml")


def test_configs_grpo_yaml_mirrors_the_defaults():
    text = (REPO_ROOT / "configs" / "grpo.yaml").read_text()
    assert RunConfig.model_validate(yaml.safe_load(text)) == RunConfig()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("# Base") and
                     not line.startswith("# `base:") and not line.startswith("# nemo_rlvr/config.py"))
    assert commented_yaml().strip() in body, "regenerate: python -m nemo_rlvr.config"


def test_presets_fill_what_is_left_unset_and_keys_win(tmp_path):
    from nemo_rlvr.config import PRESETS, dump_config

    dapo = load_config(DEFAULT_RECIPE, ["algorithm.name=dapo"]).algorithm
    assert (dapo.advantage, dapo.loss, dapo.clip_low, dapo.clip_high, dapo.dynamic_sampling) == \
        ("grpo", "ppo_clip", 0.2, 0.28, True)
    assert dapo.kl_coef == 0.001            # the recipe sets it: a recipe's key wins over the preset
    mine = load_config(DEFAULT_RECIPE, ["algorithm.name=dapo", "algorithm.clip_high=0.3"]).algorithm
    assert mine.clip_high == 0.3 and mine.dynamic_sampling
    gspo = load_config(DEFAULT_RECIPE, ["algorithm.name=gspo"]).algorithm
    assert (gspo.loss, gspo.clip_low, gspo.clip_high) == ("gspo", 3e-4, 4e-4)
    ppo = load_config(DEFAULT_RECIPE, ["algorithm.name=ppo"]).algorithm
    assert (ppo.advantage, ppo.kl_in_reward, ppo.whiten_advantages, ppo.uses_critic) == ("gae", True, True, True)
    for name in PRESETS:                     # every preset expands and survives the run's config.yaml
        cfg = load_config(DEFAULT_RECIPE, [f"algorithm.name={name}"])
        assert None not in (cfg.algorithm.advantage, cfg.algorithm.loss, cfg.algorithm.clip_high)
        again = tmp_path / f"{name}.yaml"
        again.write_text(dump_config(cfg))
        assert load_config(again) == cfg


@pytest.mark.parametrize("overrides, needle", [
    (["algorithm.name=gspo", "algorithm.tis_cap=2"], "algorithm.tis_cap=2.0 with algorithm.loss=gspo"),
    (["algorithm.clip_c=3", "algorithm.loss=cispo"], "algorithm.clip_c=3.0 is dual-clip PPO"),
    (["algorithm.name=ppo", "learner.num_workers=2"], "the critic runs beside learner rank 0"),
    (["algorithm.overlong_buffer_len=9"], "algorithm.overlong_buffer_len=9 is longer than"),
    (["algorithm.name=sac"], "algorithm.name='sac' is not allowed"),
])
def test_algorithm_combinations_that_cannot_run_are_refused(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(DEFAULT_RECIPE, overrides)
