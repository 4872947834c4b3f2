"""`nemo-rlvr train` as a user runs it (a subprocess): bad configs exit 2 with one paragraph and no
traceback; --print-config prints the resolved config and starts nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from nemo_rlvr.config import REPO_ROOT
from nemo_rlvr.data.packaged import is_packaged


@pytest.mark.parametrize("args, needle", [
    (["train", "learner.lrr=1"], "unknown key 'learner.lrr'"),
    (["train", "train.steps=x"], "train.steps='x'"),
    (["train", "missing_recipe.yaml"], "does not exist"),
    (["train", "--print-config", "generation.tensor_parallel_size=2"], "tensor_parallel_size=2 needs generation.backend=vllm"),
])
def test_cli_bad_config_exits_2_without_traceback(args, needle):
    res = subprocess.run([sys.executable, "-m", "nemo_rlvr.cli", *args], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=120, check=False)
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1        # one paragraph


def test_cli_print_config():
    res = subprocess.run([sys.executable, "-m", "nemo_rlvr.cli", "train", "--print-config", "learner.lr=0.5"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout)["learner"]["lr"] == 0.5


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemo_rlvr.cli", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120, check=False)


def test_print_config_shows_what_a_preset_expanded_to():
    alg = yaml.safe_load(cli("train", "--print-config", "algorithm.name=dapo").stdout)["algorithm"]
    assert (alg["clip_high"], alg["dynamic_sampling"], alg["overlong_buffer_len"]) == (0.28, True, 1)


BUILT_IN = ("arithmetic", "kv_store")
"""Procedural data.source tasks: generated, no file."""
FIXTURE_RECORDS = {
    "math": {"prompt": "What is 2 + 3?", "answer": "5"},
    "code": {"prompt": "Write f(x) that returns x + 1.", "tests": ["assert f(1) == 2"], "entry_point": "f"},
    "tool_call": {"prompt": "Weather in Paris?", "tools": [{"type": "function", "function": {
        "name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                          "required": ["city"]}}}],
                  "expected_calls": [{"name": "weather", "arguments": {"city": "Paris"}}]},
}
"""For recipes whose model and data live outside the repo (downloaded models, prepared datasets): a record
in the format their environment takes (what `nemo-rlvr data prepare` writes), and the tiny model's
folder in place of the downloaded one."""


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO_ROOT / "recipes").glob("*.yaml")))
def test_every_recipe_passes_the_dry_run(recipe, tmp_path, tiny_model_dir):
    cfg = yaml.safe_load(cli("train", "--print-config", f"recipes/{recipe}").stdout)
    stand_ins = []
    model, source = cfg["model"]["path"], cfg["data"]["source"]
    if model is not None and not model.startswith("pkg:") and not (REPO_ROOT / model).exists():
        stand_ins.append(f"model.path={tiny_model_dir}")
    # packaged models and data (pkg:..., reasoning_gym:...) are real and offline: no stand-in
    if source not in BUILT_IN and not is_packaged(source) and not (REPO_ROOT / source).exists():
        data = tmp_path / "records.jsonl"
        data.write_text(json.dumps(FIXTURE_RECORDS[cfg["env"]["name"]]) + "\n")
        stand_ins.append(f"data.source={data}")
    res = cli("train", "--dry-run", f"recipes/{recipe}", f"output_dir={tmp_path}", *stand_ins)
    assert res.returncode == 0, res.stderr
    assert "dry run: config, model, data, environments and placement check out" in res.stdout
    assert not (tmp_path).joinpath(yaml.safe_load(cli("train", "--print-config", f"recipes/{recipe}").stdout)["name"]).exists()


def test_dry_run_plans_the_declared_gpu_cluster_and_says_what_does_not_fit():
    ok = cli("train", "--dry-run", "generation.backend=vllm", "generation.num_workers=2",
             "generation.tensor_parallel_size=2", "cluster.nodes=2", "cluster.gpus_per_node=4", "learner.num_workers=4")
    assert ok.returncode == 0, ok.stderr
    assert "Placement split on 2 nodes x 4 GPUs = 8 GPUs" in ok.stdout and "weights: nccl" in ok.stdout
    bad = cli("train", "--dry-run", "generation.backend=vllm", "generation.num_workers=4",
              "generation.tensor_parallel_size=2", "cluster.gpus_per_node=8", "learner.num_workers=4")
    assert bad.returncode == 2 and "the 12 GPUs asked are 4 more than the 8 it has" in bad.stderr
    missing = cli("train", "--dry-run", "data.source=/nonexistent.jsonl")
    assert missing.returncode == 2 and "data.source='/nonexistent.jsonl'" in missing.stderr
    unknown = cli("train", "--dry-run", "env.name=nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr and "Traceback" not in unknown.stderr
