"""`modelyard render`: yard.yaml as Kubernetes manifests (or a Helm chart), Prometheus alert rules, or Grafana
dashboards."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click

from modelyard.deploy.alerts import alert_rules
from modelyard.deploy.files import dump, texts, write_tree
from modelyard.deploy.grafana import dashboard_text, dashboards
from modelyard.deploy.helm import chart
from modelyard.deploy.kube_common import Images, RenderOptions, Weights
from modelyard.deploy.kubernetes import RenderError
from modelyard.deploy.kubernetes import render as render_kubernetes
from modelyard.spec import SpecError, load_spec
from modelyard.spec.schema import YardSpec


def _load(path: str) -> YardSpec:
    try:
        return load_spec(path)
    except SpecError as exc:
        click.echo(f"{path} is not valid:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE", param_hint=flag)
        out[key] = val
    return out


@click.group("render")
def render_group() -> None:
    """Render yard.yaml for somewhere else: Kubernetes manifests, alert rules, Grafana dashboards."""


@render_group.command("kubernetes")
@click.option("-f", "--file", "file", default="yard.yaml", show_default=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False), help="Folder for the manifests.")
@click.option("--helm", "helm_dir", type=click.Path(file_okay=False), help="Also write a Helm chart there.")
@click.option("--autoscaler", type=click.Choice(["keda", "hpa"]), default="keda", show_default=True)
@click.option("--namespace", default="modelyard", show_default=True)
@click.option("--image", "image", default=None, help="The modelyard image (gateway, simulator).")
@click.option("--vllm-image", default=None)
@click.option("--sglang-image", default=None)
@click.option("--llamacpp-image", default=None, help="llama.cpp's server image (pin the build you tested).")
@click.option("--redis-image", default=None)
@click.option("--weights-claim", default=None, help="PersistentVolumeClaim holding the weights.")
@click.option("--weights-host-path", default=None, help="A folder on every GPU node instead of a claim.")
@click.option("--storage-class", default=None, help="The weights claim's storage class.")
@click.option("--gpu-node-selector", multiple=True, metavar="KEY=VALUE", help="Replaces the default GPU selector.")
@click.option("--node-selector", multiple=True, metavar="KEY=VALUE", help="For the gateway, Redis, CPU engines.")
@click.option("--prometheus-url", default=None, help="What KEDA queries.")
@click.option("--monitoring-namespace", default="monitoring", show_default=True,
              help="Prometheus' namespace (allowed to scrape the engines).")
def kubernetes_command(file: str, out: str, helm_dir: str | None, autoscaler: str, namespace: str,
                       image: str | None, vllm_image: str | None, sglang_image: str | None,
                       llamacpp_image: str | None, redis_image: str | None,
                       weights_claim: str | None, weights_host_path: str | None, storage_class: str | None,
                       gpu_node_selector: tuple[str, ...], node_selector: tuple[str, ...],
                       prometheus_url: str | None, monitoring_namespace: str) -> None:
    """Manifests for a Kubernetes cluster, one file per model plus shared files and a kustomization.yaml."""
    spec = _load(file)
    defaults = RenderOptions()
    chosen = {"modelyard": image, "vllm": vllm_image, "sglang": sglang_image, "llamacpp": llamacpp_image,
              "redis": redis_image}
    images = replace(Images(), **{k: v for k, v in chosen.items() if v})
    weights = replace(Weights(), **{k: v for k, v in (("claim", weights_claim), ("host_path", weights_host_path),
                                                      ("storage_class", storage_class)) if v})
    options = replace(defaults, namespace=namespace, autoscaler="hpa" if autoscaler == "hpa" else "keda",
                      images=images, weights=weights, prometheus_url=prometheus_url or defaults.prometheus_url,
                      gpu_node_selector=_pairs(gpu_node_selector, "--gpu-node-selector")
                      if gpu_node_selector else defaults.gpu_node_selector,
                      cpu_node_selector=_pairs(node_selector, "--node-selector"),
                      monitoring_namespace=monitoring_namespace)
    try:
        rendered = render_kubernetes(spec, options)
        helm_files = chart(spec, options) if helm_dir else {}
    except RenderError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    written = write_tree(texts(rendered), Path(out))
    click.echo(f"{out}: {len(written)} files, {len(rendered.objects())} objects (kubectl apply -k {out})")
    if helm_dir:
        write_tree(helm_files, Path(helm_dir))
        click.echo(f"{helm_dir}: Helm chart (helm install modelyard {helm_dir} -n {namespace} --create-namespace)")
    for note in rendered.notes:
        click.echo(f"note: {note}", err=True)


@render_group.command("alerts")
@click.option("-f", "--file", "file", default="yard.yaml", show_default=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False),
              help="The rules file (promtool check rules FILE).")
def alerts_command(file: str, out: str) -> None:
    """Prometheus alert rules for the gateway's metrics, as a rules file."""
    Path(out).write_text(dump([alert_rules(_load(file))]))
    click.echo(f"{out}: alert rules")


@render_group.command("grafana")
@click.option("-f", "--file", "file", default="yard.yaml", show_default=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for the dashboards (one JSON file each).")
def grafana_command(file: str, out: str) -> None:
    """Grafana dashboards for the gateway's metrics: cluster overview, per model, per key."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for uid, dashboard in dashboards(_load(file)).items():
        (folder / f"{uid}.json").write_text(dashboard_text(dashboard))
        click.echo(f"{folder / f'{uid}.json'}: {dashboard['title']}")


render = render_group
