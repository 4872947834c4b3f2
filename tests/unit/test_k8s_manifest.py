"""launch/k8s/rayjob.yaml: no Kubernetes here, so the manifest is checked for what would break it on
a cluster: every volume a container mounts exists, the PVC it claims is the one defined, the Ray
version is the installed one, the head holds no GPU, the grace period covers `ray job stop`'s
wait, and the driver's command line is a `nemo-rlvr train` that passes its own --dry-run."""

from __future__ import annotations

import shlex
import subprocess
import sys

import ray
import yaml

from nemo_rlvr.config import REPO_ROOT

MANIFEST = REPO_ROOT / "launch" / "k8s" / "rayjob.yaml"


def _docs():
    pvc, job = list(yaml.safe_load_all(MANIFEST.read_text()))
    return pvc, job


def _pods(job):
    spec = job["spec"]["rayClusterSpec"]
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


def test_manifest_objects_volumes_and_versions_fit_together():
    pvc, job = _docs()
    assert (pvc["apiVersion"], pvc["kind"], job["apiVersion"], job["kind"]) == (
        "v1", "PersistentVolumeClaim", "ray.io/v1", "RayJob")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod mounts it
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    for name, group in _pods(job):
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        for c in pod["containers"]:
            assert {m["name"] for m in c["volumeMounts"]} <= set(volumes), name
            assert {"name": "RAY_AUTH_MODE", "value": "disabled"} in c["env"], name
            assert c["resources"]["requests"] == c["resources"]["limits"], name  # guaranteed QoS
        gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for c in pod["containers"]]
        if name == "head":
            assert group["rayStartParams"]["num-gpus"] == "0" and gpus == [None]
        else:
            assert int(gpus[0]) > 0 and group["minReplicas"] == group["replicas"] == group["maxReplicas"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    wait = {e["name"]: e["value"] for e in head["containers"][0]["env"]}["RAY_JOB_STOP_WAIT_TIME_S"]
    assert head["terminationGracePeriodSeconds"] >= int(wait)  # SIGKILL only after the driver's own wait


def test_the_entrypoint_is_a_train_command_that_passes_its_dry_run(tmp_path, tiny_model_dir):
    _, job = _docs()
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["nemo-rlvr", "train"] and "cluster.address=auto" in argv
    # /shared does not exist here: the run folder and cache move to tmp_path, the rest as written
    args = [a.replace("/shared", str(tmp_path)) for a in argv[2:]]
    res = subprocess.run([sys.executable, "-m", "nemo_rlvr.cli", "train", "--dry-run", *args,
                          f"model.path={tiny_model_dir}", "model.warm_start.steps=0"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert "dry run: config, model, data, environments and placement check out" in res.stdout
