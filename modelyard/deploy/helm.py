"""`render kubernetes --helm DIR`: the same manifests as a Helm chart whose values are the image tags, the
namespace, the weights' storage class and size, and the node selectors. The templates are the rendered files with
those few values templated (rendered with placeholders, then each placeholder replaced by its template expression),
so the chart and the plain manifests cannot drift apart; nothing else is templated."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from modelyard import __version__
from modelyard.deploy.files import HEADER, dump
from modelyard.deploy.kube_common import Images, RenderOptions
from modelyard.deploy.kubernetes import KUSTOMIZATION, render
from modelyard.spec.schema import YardSpec

NAMESPACE = "__MODELYARD_NAMESPACE__"
STORAGE_CLASS = "__MODELYARD_STORAGE_CLASS__"
WEIGHTS_SIZE = "__MODELYARD_WEIGHTS_SIZE__"
IMAGE_FIELDS = ("modelyard", "vllm", "sglang", "redis")
SELECTORS = {"__MODELYARD_NODE_SELECTOR_GPU__": "gpu", "__MODELYARD_NODE_SELECTOR_CPU__": "cpu"}
HELPERS = """{{- define "modelyard.namespace" -}}
{{- .Values.namespace | default .Release.Namespace -}}
{{- end -}}
"""


def _image_marker(field: str) -> str:
    return f"__MODELYARD_IMAGE_{field.upper()}__"


def _placeholders(options: RenderOptions) -> RenderOptions:
    images = Images(**{f: _image_marker(f) for f in IMAGE_FIELDS})
    weights = replace(options.weights, storage_class=STORAGE_CLASS, size=WEIGHTS_SIZE)
    gpu, cpu = SELECTORS
    return replace(options, namespace=NAMESPACE, images=images, weights=weights,
                   gpu_node_selector={gpu: "x"}, cpu_node_selector={cpu: "x"})


def _escape(text: str) -> str:
    """Braces that are not ours (the alert annotations' {{ $labels.model }}) stay literal in the chart."""
    return re.sub(r"\{\{|\}\}", lambda m: '{{ "{{" }}' if m.group() == "{{" else '{{ "}}" }}', text)


def templated(text: str) -> str:
    text = _escape(text)
    text = text.replace(NAMESPACE, '{{ include "modelyard.namespace" . }}')
    text = text.replace(WEIGHTS_SIZE, "{{ .Values.weights.size }}")
    for field in IMAGE_FIELDS:
        text = text.replace(_image_marker(field), f"{{{{ .Values.images.{field} | quote }}}}")
    text = re.sub(rf"^( *)storageClassName: {STORAGE_CLASS}$",
                  r"\1{{- with .Values.weights.storageClass }}\n\1storageClassName: {{ . | quote }}\n\1{{- end }}",
                  text, flags=re.M)
    for marker, kind in SELECTORS.items():
        text = re.sub(rf"^( *){marker}: x$", _selector_template(kind), text, flags=re.M)
    return text


def _selector_template(kind: str) -> Callable[[re.Match[str]], str]:
    def template(match: re.Match[str]) -> str:
        indent = match.group(1)
        return f"{indent}{{{{- toYaml .Values.nodeSelector.{kind} | nindent {len(indent)} }}}}"

    return template


def values(options: RenderOptions) -> dict[str, Any]:
    return {
        "namespace": options.namespace,  # empty: the release's (helm install -n NS --create-namespace)
        "images": {f: getattr(options.images, f) for f in IMAGE_FIELDS},
        "weights": {"storageClass": options.weights.storage_class or "", "size": options.weights.size},
        "nodeSelector": {"gpu": dict(options.gpu_node_selector), "cpu": dict(options.cpu_node_selector)},
    }


def chart(spec: YardSpec, options: RenderOptions | None = None, name: str = "modelyard") -> dict[str, str]:
    """The chart's files: Chart.yaml, values.yaml (this render's values), templates/ (the namespace is helm's own:
    `--create-namespace`)."""
    options = options or RenderOptions()
    rendered = render(spec, _placeholders(options))
    files = {"Chart.yaml": dump([{"apiVersion": "v2", "name": name, "description": "modelyard: models and gateway "
                                  "rendered from yard.yaml", "type": "application", "version": __version__,
                                  "appVersion": __version__}]),
             "values.yaml": dump([values(options)]),
             "templates/_helpers.tpl": HELPERS}
    for file_name, objects in rendered.files.items():
        if file_name != "namespace.yaml":
            files[f"templates/{file_name}"] = HEADER + templated(dump(objects).removeprefix(HEADER))
    for file_name, document in rendered.extras.items():
        if file_name != KUSTOMIZATION:
            files[file_name] = dump([document])  # beside the chart, not applied by it
    return files
