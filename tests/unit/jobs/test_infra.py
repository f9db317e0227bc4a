"""The deployment files in infra/ are checked against the schemas their tools use:

- the AWS cluster-launcher YAML against Ray's own `ray/autoscaler/ray-schema.json`
  (jsonschema), the schema `ray up` validates with;
- every Kubernetes pod template of the KubeRay RayCluster and RayJob, and the Secrets,
  against the Kubernetes API schema (`kubernetes-validate`, strict: unknown fields fail);
  the KubeRay fields themselves against the required fields of the KubeRay v1 CRDs
  (headGroupSpec.template; groupName, minReplicas, maxReplicas, template per worker group;
  authOptions.mode in {disabled, token}; rayStartParams values are strings);
- the RayJob's entrypoint through distill's own CLI parser and job spec;
- the Dockerfile's build arguments and COPY sources, and the compose services.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
INFRA = ROOT / "infra"
K8S_VERSION = "1.30"


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# -- AWS cluster launcher ---------------------------------------------------------------------


def test_aws_launcher_config_passes_rays_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)

    types = config["available_node_types"]
    assert set(types) == {"head", "cpu_worker", "gpu_worker"}
    assert config["head_node_type"] in types
    assert config["provider"]["type"] == "aws"
    assert types["head"]["resources"] == {"CPU": 0}  # Train workers never land on the head
    gpu = types["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))
    assert "--gpus all" in gpu["docker"]["worker_run_options"]
    assert "cu" in gpu["docker"]["worker_image"].rsplit(":", 1)[1]
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert command.startswith("RAY_AUTH_MODE=token ")
    assert "~/.ray/auth_token" in config["file_mounts"]
    text = (INFRA / "aws" / "cluster.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in text and "aws_secret_access_key" not in text


def test_schema_check_catches_a_broken_launcher_config():
    """Control: the same validation rejects a node type without node_config."""
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())
    del config["available_node_types"]["cpu_worker"]["node_config"]
    with pytest.raises(jsonschema.ValidationError, match="node_config"):
        jsonschema.validate(config, schema)


# -- KubeRay -----------------------------------------------------------------------------------


def secrets() -> dict[str, dict]:
    docs = load_all(INFRA / "kuberay" / "secrets.yaml")
    return {doc["metadata"]["name"]: doc for doc in docs}


def validate_pod_template(template: dict, where: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": where}, **template}
    kv.validate(pod, K8S_VERSION, strict=True)


def check_ray_cluster_spec(spec: dict, where: str) -> None:
    """The KubeRay v1 CRD's required fields, plus distill's own expectations."""
    assert spec["authOptions"]["mode"] in ("disabled", "token")
    assert spec["authOptions"]["mode"] == "token"
    token_secret = secrets()[spec["authOptions"]["secretName"]]
    assert "auth_token" in token_secret["stringData"]  # the key KubeRay reads

    head = spec["headGroupSpec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for name, group in [("head", head), *groups.items()]:
        assert "template" in group
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values()), name
        validate_pod_template(group["template"], f"{where}-{name}")
        for container in group["template"]["spec"]["containers"]:
            refs = [e["secretRef"]["name"] for e in container.get("envFrom", [])]
            assert "distill-s3" in refs, (name, container["name"])
            assert "distill-s3" in secrets()
            env = {e["name"] for e in container.get("env", [])}
            assert not env & {"AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN"}  # only via Secrets
    for group in groups.values():
        assert {"groupName", "minReplicas", "maxReplicas", "template"} <= set(group)
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "DS_ACCELERATOR", "value": "cuda"} in gpu["env"]
    cpu = groups["cpu"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert head["rayStartParams"]["num-cpus"] == "0"


def test_secrets_are_valid_kubernetes_secrets_with_placeholders_only():
    kv = pytest.importorskip("kubernetes_validate")
    found = secrets()
    assert set(found) == {"distill-s3", "distill-ray-token"}
    for doc in found.values():
        kv.validate(doc, K8S_VERSION, strict=True)
    assert found["distill-ray-token"]["stringData"]["auth_token"] == "FILL-IN"
    assert found["distill-s3"]["stringData"]["AWS_SECRET_ACCESS_KEY"] == "FILL-IN"


def test_kuberay_raycluster_manifest():
    (cluster,) = load_all(INFRA / "kuberay" / "raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", cluster["metadata"]["name"])
    check_ray_cluster_spec(cluster["spec"], "raycluster")


def test_kuberay_rayjob_manifest_runs_a_valid_distill_job():
    (job,) = load_all(INFRA / "kuberay" / "rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    check_ray_cluster_spec(spec["rayClusterSpec"], "rayjob")
    yaml.safe_load(spec["runtimeEnvYAML"])

    # The entrypoint is a distill command line that parses and whose spec validates.
    from distill.core.spec_loading import load_spec
    from distill.jobs.cli import build_parser

    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "distill"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    spec_ = load_spec(args.config, args.overrides)
    assert spec_.output.dir.startswith("s3://")  # results outlive the job's cluster
    assert spec_.scaling.max_failures >= 1


# -- Dockerfile and compose -----------------------------------------------------------------


def test_dockerfile_takes_a_cuda_base_and_copies_existing_sources():
    text = (INFRA / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    first_from = next(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    assert lines[first_from] == "FROM ${BASE_IMAGE}"
    assert any(ln.startswith("ARG BASE_IMAGE=") for ln in lines[:first_from])
    assert "--build-arg BASE_IMAGE=nvidia/cuda:" in text  # the documented GPU build
    for arg in ("TORCH_INDEX_URL", "TORCH_VERSION", "DS_ACCELERATOR"):
        assert any(ln.startswith(f"ARG {arg}") for ln in lines), arg
    for ln in lines:
        if ln.startswith("COPY "):
            for source in ln.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert "RAY_AUTH_TOKEN" not in text and "AWS_SECRET" not in text


def test_compose_has_minio_and_a_two_node_ray_cluster_with_token_auth():
    path = INFRA / "compose" / "docker-compose.yml"
    compose = yaml.safe_load(path.read_text())
    services = compose["services"]
    assert {"minio", "create-bucket", "ray-head", "ray-worker"} <= set(services)
    head, worker = services["ray-head"], services["ray-worker"]
    assert "--head" in head["command"] and "8265:8265" in head["ports"]
    assert "--address=ray-head:6379" in worker["command"]
    for node in (head, worker):
        build = node["build"]
        assert (path.parent / build["context"] / build["dockerfile"]).is_file()
        env = node["environment"]
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")  # no default token
        assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert worker["depends_on"]["ray-head"]["condition"] == "service_started"
    assert head["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
