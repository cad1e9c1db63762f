"""The deployment files hold together (no container engine or cluster runs here, so this is
what can be checked): the images, the services, the probes, the run queue."""

import re

import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"


def test_the_dockerfile_builds_an_api_and_a_dagster_image_from_one_build_stage():
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)", dockerfile, flags=re.MULTILINE)
    assert [name for _, name in stages] == ["build", "runtime", "api", "dagster"]
    # The API's environment is the package without extras: no Dagster, no Spark.
    assert dockerfile.count("pip install --no-cache-dir . ") == 1
    assert dockerfile.count('pip install --no-cache-dir ".[pipeline]"') == 1
    assert "COPY --from=build /opt/api-venv" in dockerfile.split("AS api")[1].split("AS dagster")[0]
    dagster_stage = dockerfile.split("AS dagster")[1]
    assert (
        "openjdk-17-jre-headless" in dagster_stage
        and "openjdk" not in dockerfile.split("AS dagster")[0]
    )
    for copied in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, flags=re.MULTILINE):
        assert (REPO / copied).exists(), copied


def local_workspace() -> list[dict]:
    return yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]


def test_compose_runs_dagster_on_postgres_beside_the_api():
    compose = yaml.safe_load((DEPLOY / "docker" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "code", "streaming", "webserver", "daemon", "api"}
    workspace = yaml.safe_load((DEPLOY / "docker" / "workspace.yaml").read_text())
    commands = {
        "code": yaml.safe_load((REPO / "Dockerfile").read_text().split("CMD ")[-1]),
        "streaming": services["streaming"]["command"],
    }
    # The same code locations as the workspace dagster dev loads, each served where it says.
    assert [location["grpc_server"]["location_name"] for location in workspace["load_from"]] == [
        location["python_module"]["location_name"] for location in local_workspace()
    ]
    for location, local in zip(workspace["load_from"], local_workspace(), strict=True):
        command = commands[location["grpc_server"]["host"]]
        assert str(location["grpc_server"]["port"]) == command[command.index("-p") + 1]
        assert command[command.index("-m") + 1] == local["python_module"]["module_name"]
    for name in ("webserver", "daemon"):
        assert "/app/workspace.yaml" in services[name]["command"]
        assert services[name]["environment"]["DAGSTER_PG_HOST"] == "postgres"
    assert "DAGSTER_PG_PASSWORD:?" in (DEPLOY / "docker" / "docker-compose.yml").read_text()


def test_the_api_rolls_out_with_zero_downtime():
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "api.yaml").read_text()))
    kinds = {document["kind"]: document for document in documents}
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["ports"][0]["containerPort"] == 8000
    assert "preStop" in container["lifecycle"]
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] >= 1
    assert kinds["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    assert not any("KEY" in str(env.get("value", "")) for env in container["env"])


def test_the_helm_values_keep_the_run_queue_of_dagster_yaml():
    values = yaml.safe_load((DEPLOY / "helm" / "dagster-values.yaml").read_text())
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    embedded = yaml.safe_load((REPO / "dagster.yaml").read_text())["run_queue"]
    assert queue["tagConcurrencyLimits"] == embedded["tag_concurrency_limits"]
    assert queue["dequeueIntervalSeconds"] == embedded["dequeue_interval_seconds"]
    deployments = values["dagster-user-deployments"]["deployments"]
    assert [deployment["dagsterApiGrpcArgs"] for deployment in deployments] == [
        ["-m", location["python_module"]["module_name"]] for location in local_workspace()
    ]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
