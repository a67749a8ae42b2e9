"""The chart is the plain render with a few values templated: filling its templates with its values.yaml (by a
small evaluator of the handful of constructs the chart uses; helm itself is not installed here) gives back the
plain manifests, for the chart's default values and for others."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import yaml

from modelyard.deploy.files import HEADER, texts
from modelyard.deploy.helm import chart
from modelyard.deploy.kube_common import Images, RenderOptions, Weights
from modelyard.deploy.kubernetes import render
from tests.deploy.conftest import spec_named
from tests.deploy.golden import check_golden
from tests.deploy.schemas import validate


def _fill(template: str, values: dict, namespace: str) -> str:
    text = template.replace('{{ include "modelyard.namespace" . }}', values["namespace"] or namespace)
    text = text.replace("{{ .Values.weights.size }}", values["weights"]["size"])
    text = re.sub(r"\{\{ \.Values\.images\.(\w+) \| quote \}\}", lambda m: json.dumps(values["images"][m[1]]), text)

    def storage(m: re.Match[str]) -> str:
        cls = values["weights"]["storageClass"]
        return f"\n{m[1]}storageClassName: {json.dumps(cls)}" if cls else ""

    text = re.sub(r"\n( *)\{\{- with \.Values\.weights\.storageClass \}\}\n *storageClassName: \{\{ \. \| quote \}\}"
                  r"\n *\{\{- end \}\}", storage, text)

    def selector(m: re.Match[str]) -> str:
        dumped = yaml.safe_dump(values["nodeSelector"][m[1]], default_flow_style=False).rstrip("\n")
        return "".join("\n" + " " * int(m[2]) + line for line in dumped.splitlines())

    text = re.sub(r"\n *\{\{- toYaml \.Values\.nodeSelector\.(\w+) \| nindent (\d+) \}\}", selector, text)
    text = text.replace('{{ "{{" }}', "{{").replace('{{ "}}" }}', "}}")
    assert "{{ ." not in text and "{{-" not in text, text
    return text


def _objects(files: dict[str, str], namespace: str) -> list[dict]:
    values = yaml.safe_load(files["values.yaml"])
    out = []
    for name, text in sorted(files.items()):
        if name.startswith("templates/") and name.endswith(".yaml"):
            out += [o for o in yaml.safe_load_all(_fill(text, values, namespace)) if o]
    return out


def _plain(options: RenderOptions) -> list[dict]:
    rendered = render(spec_named("gpu"), options)
    return sorted((o for name, objs in rendered.files.items() if name != "namespace.yaml" for o in objs),
                  key=lambda o: (o["kind"], o["metadata"]["name"]))


def _key(o: dict) -> tuple[str, str]:
    return o["kind"], o["metadata"]["name"]


def test_chart_with_its_default_values_is_the_plain_render() -> None:
    files = chart(spec_named("gpu"))
    assert sorted(_objects(files, "modelyard"), key=_key) == _plain(RenderOptions())


def test_chart_values_reach_the_objects() -> None:
    options = RenderOptions(namespace="ml", images=Images(vllm="registry.internal/vllm:v0.33.0"),
                            weights=Weights(storage_class="nfs", size="2Ti"),
                            gpu_node_selector={"pool": "h100"}, cpu_node_selector={"pool": "cpu"})
    files = chart(spec_named("gpu"), options)
    objects = sorted(_objects(files, "ignored"), key=_key)
    assert objects == _plain(options)
    for obj in objects:
        validate(obj)
    default_values = yaml.safe_load(chart(spec_named("gpu"))["values.yaml"])
    files["values.yaml"] = yaml.safe_dump({**default_values, "namespace": ""})
    assert {o["metadata"]["namespace"] for o in _objects(files, "release-ns")} == {"release-ns"}


def test_chart_golden() -> None:
    files = chart(spec_named("gpu"))
    assert files["templates/gateway.yaml"].startswith(HEADER)
    assert set(texts(render(spec_named("gpu")))) - {"namespace.yaml", "kustomization.yaml"} <= {
        f.removeprefix("templates/") for f in files}
    check_golden("gpu-helm", files)


def test_alert_templates_survive_helm() -> None:
    files = chart(spec_named("gpu"), replace(RenderOptions()))
    monitoring = _fill(files["templates/monitoring.yaml"], yaml.safe_load(files["values.yaml"]), "modelyard")
    assert "{{ $labels.model }}" in monitoring
