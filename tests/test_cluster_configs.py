"""The cluster paths that cannot run here: cluster.yaml, KubeRay manifests, the working-dir upload.

`ray up` and `kubectl apply` need a cloud account, so these tests check what can be checked offline:
cluster.yaml against Ray's own launcher schema and config preparation, the KubeRay fields a RayJob and a
RayService need, that every entrypoint / import path names a real file and attribute, that Serve `args`
are options of the script's command, and which files `.rayignore` keeps out of a job's upload. No Ray cluster needed.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shlex
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

from ynat_ray.config import BatchConfig, CommandConfig, ServeConfig, TrainConfig, TuneConfig

JOB_COMMANDS: dict[str, type[CommandConfig]] = {"jobs/train.py": TrainConfig, "jobs/tune.py": TuneConfig, "jobs/predict.py": BatchConfig}

REPO = Path(__file__).resolve().parents[1]
# Not `import ray` at module level: importing Ray before conftest's cluster fixture sets RAY_AUTH_MODE=token
# freezes auth mode 'disabled' in this process, and the in-process tests then cannot join the cluster.
RAY_VERSION = version("ray")
RAY_TAG = f"rayproject/ray:{RAY_VERSION}-py311"


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / name).read_text(encoding="utf-8"))


def pyproject_pins() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return {re.split(r"[<>=!\[ ]", d, maxsplit=1)[0].lower().replace("_", "-"): d for d in deps}


def check_pins(packages: list[str]) -> None:
    """runtime_env pip pins: never ray itself (the image's Ray must match the cluster), same ranges as pyproject."""
    pins = pyproject_pins()
    for spec in packages:
        name = re.split(r"[<>=!\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-")
        assert name != "ray", "runtime_env must not reinstall ray"
        if name in pins:
            assert spec == pins[name], f"runtime_env pins {spec!r} but pyproject.toml says {pins[name]!r}"
    assert any(s.startswith("torch") for s in packages) and any(s.startswith("transformers") for s in packages)


def check_entrypoint(command: str) -> list[str]:
    """`python <script> --flag value ...`: the script exists and every flag is an option of its command."""
    argv = shlex.split(command)
    assert argv[0] == "python" and (REPO / argv[1]).is_file(), f"entrypoint {argv[1]} is not a file in this repository"
    fields = set(JOB_COMMANDS[argv[1]].options())
    flags = [a[2:] for a in argv[2:] if a.startswith("--")]
    assert flags and set(flags) <= fields, f"unknown options: {set(flags) - fields}"
    return argv


def check_import_path(import_path: str) -> None:
    """'pkg.module:attr' resolves to a file in this repository that defines attr (parsed, not imported)."""
    module, attr = import_path.split(":")
    path = REPO / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"{import_path}: {path} does not exist"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    lazy = "__getattr__" in names and f'"{attr}"' in path.read_text(encoding="utf-8")  # PEP 562 module attribute
    assert attr in names or lazy, f"{import_path}: {path.name} defines no {attr!r}"


# ---------------------------------------------------------------------------------------------
# cluster.yaml


def test_cluster_yaml_passes_rays_launcher_schema():
    import jsonschema
    import ray.autoscaler

    config = load("cluster.yaml")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)

    # What `ray up` does before it talks to AWS: fill defaults, merge setup commands, validate.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_cluster_yaml_has_cpu_head_autoscaling_gpu_workers_and_installs_the_project():
    config = load("cluster.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    gpu = [t for name, t in types.items() if name != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert len(gpu) == 1 and gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] >= 1, "one autoscaling GPU worker type"
    assert gpu[0]["node_config"]["IamInstanceProfile"], "GPU workers write checkpoints to s3:// themselves"

    docker = config["docker"]
    assert docker["head_image"] == f"{RAY_TAG}-cpu" and docker["worker_image"] == f"{RAY_TAG}-gpu"
    assert "ray-ml" not in json.dumps(config)
    assert (REPO / config["file_mounts"]["~/ynat-ray"]).resolve() == REPO
    for commands in (config["head_setup_commands"], config["worker_setup_commands"]):
        assert any("pip install" in c and "-e ~/ynat-ray" in c for c in commands)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c), "token auth stays on"
    assert "~/.ray/auth_token" in config["file_mounts"]


# ---------------------------------------------------------------------------------------------
# KubeRay


def check_ray_cluster_spec(spec: dict[str, Any]) -> None:
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head
    head_container = head["template"]["spec"]["containers"][0]
    assert head_container["image"].startswith(RAY_TAG)
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265}
    groups = spec["workerGroupSpecs"]
    assert groups, "at least one worker group"
    for group in groups:
        assert {"groupName", "rayStartParams", "template"} <= set(group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu_groups = [g for g in groups if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1]
    assert gpu_groups, "a GPU worker group"
    assert all(g["template"]["spec"]["containers"][0]["image"] == f"{RAY_TAG}-gpu" for g in gpu_groups)


def test_rayjob_runs_the_training_entry_point():
    job = load("k8s/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    argv = check_entrypoint(spec["entrypoint"])
    assert argv[1] == "jobs/train.py" and "--use_gpu" in argv and any(a.startswith("s3://") for a in argv)
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"].endswith(".zip")
    check_pins(runtime_env["pip"])
    check_ray_cluster_spec(spec["rayClusterSpec"])


def test_rayservice_serves_the_serve_app_on_gpus():
    service = load("k8s/rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    assert app["import_path"] == "serve.app:app_builder"
    check_import_path(app["import_path"])
    check_import_path("serve.app:app")  # the YNAT_CHECKPOINT variant documented beside it
    cfg = ServeConfig.of(**app["args"])  # args are `ynat-ray serve` options
    assert (cfg.engine.checkpoint or "").startswith("s3://") and cfg.serve.replica_gpus >= 1
    assert cfg.serve.max_ongoing_requests >= cfg.limits.max_batch_size
    check_pins(app["runtime_env"]["pip"])
    check_ray_cluster_spec(service["spec"]["rayClusterConfig"])


# ---------------------------------------------------------------------------------------------
# ray job submit --working-dir .


def test_rayignore_keeps_data_and_outputs_out_of_the_upload(tmp_path):
    from ray._private.runtime_env.packaging import _dir_travel

    root = tmp_path / "repo"
    root.mkdir()
    for name in (".rayignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    keep = ["jobs/predict.py", "jobs/train.py", "serve/app.py", "ynat_ray/batch.py", "ynat_ray/assets/ynat_default/train.parquet",
            "pyproject.toml"]  # fmt: skip
    drop = [
        ".git/HEAD", "data/train.jsonl", "outputs/preds/part-0.parquet", "ynat_ray_results/run/checkpoint_000001/model.safetensors",
        "preds.quarantine.jsonl", "bench/results/batch.json", "ynat-ray.zip", "ynat_ray/__pycache__/batch.cpython-311.pyc",
    ]  # fmt: skip
    for rel in keep + drop:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    uploaded: list[str] = []
    _dir_travel(root, [], lambda p: uploaded.append(p.relative_to(root).as_posix()) if p.is_file() else None, include_gitignore=True)
    assert set(keep) <= set(uploaded)
    assert not set(drop) & set(uploaded), f"uploaded: {sorted(set(drop) & set(uploaded))}"


@pytest.mark.parametrize("entry", ["jobs/train.py", "jobs/predict.py"])
def test_job_entry_points_exist_and_parse(entry):
    source = (REPO / entry).read_text(encoding="utf-8")
    ast.parse(source)
    assert "sys.path.insert(0" in source, "runs from an uploaded working dir without an install"
