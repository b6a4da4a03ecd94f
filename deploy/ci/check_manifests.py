#!/usr/bin/env python3
"""Cross-checks the Kubernetes manifests beyond what schema validation can see.

kubernetes-validate checks every object against the Kubernetes JSON schemas, but it has no
schema for ServiceMonitor (a CRD) and checks no references between objects. This script
reads the output of `kubectl kustomize deploy/kubernetes` plus the two files kept out of
the kustomization, and checks that the objects fit together:

  * selectors of the Deployment, Service, PDB, NetworkPolicy and ServiceMonitor match the
    pod labels; the HPA targets the Deployment;
  * every port name used by the Service, probes, Ingress and ServiceMonitor exists;
  * the Secret keys and the ConfigMap key the pod uses exist;
  * the ServiceMonitor uses only the fields listed below (an allow-list written for these
    manifests, not the operator's CRD schema);
  * the pod runs non-root, read-only, without capabilities, with seccomp RuntimeDefault;
  * terminationGracePeriodSeconds > preStop sleep + shutdown_grace (from the ConfigMap's
    gateway.toml) + 1 s;
  * the Ingress hashes on a variable the controller ConfigMap's http-snippet defines, with
    WebSocket timeouts of at least an hour.

Usage: check_manifests.py RENDERED.yaml SECRET_EXAMPLE.yaml CONTROLLER_CONFIGMAP.yaml
           [--write-config PATH]
--write-config writes the ConfigMap's gateway.toml so the real binary can parse it.
"""

import re
import sys
import tomllib

import yaml

errors = []


def check(condition, message):
    if not condition:
        errors.append(message)
    return condition


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(objects, kind):
    found = [o for o in objects if o.get("kind") == kind]
    if not check(len(found) == 1, f"expected exactly one {kind}, found {len(found)}"):
        return {}
    return found[0]


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def parse_duration(text):
    """Seconds from the gateway's duration syntax: "250ms", "15s", "2m", "1h", or a bare number."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
    if not m:
        raise ValueError(f"bad duration {text!r}")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


SERVICEMONITOR_SPEC_KEYS = {"selector", "endpoints", "namespaceSelector", "jobLabel",
                            "targetLabels", "podTargetLabels", "sampleLimit"}
SERVICEMONITOR_ENDPOINT_KEYS = {"port", "path", "scheme", "interval", "scrapeTimeout",
                                "honorLabels", "relabelings", "metricRelabelings"}


def main(argv):
    if len(argv) not in (4, 6):
        print(__doc__, file=sys.stderr)
        return 2
    rendered, secret_path, controller_path = argv[1:4]
    write_config = argv[5] if len(argv) == 6 and argv[4] == "--write-config" else None

    objects = load_all(rendered)
    secret = one(load_all(secret_path), "Secret")
    controller_cm = one(load_all(controller_path), "ConfigMap")

    deployment = one(objects, "Deployment")
    service = one(objects, "Service")
    configmap = one(objects, "ConfigMap")
    hpa = one(objects, "HorizontalPodAutoscaler")
    pdb = one(objects, "PodDisruptionBudget")
    netpol = one(objects, "NetworkPolicy")
    ingress = one(objects, "Ingress")
    monitor = one(objects, "ServiceMonitor")
    if errors:
        return report()

    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    check(len(namespaces) == 1 and None not in namespaces,
          f"all namespaced objects should share one namespace, got {namespaces}")

    name = deployment["metadata"]["name"]
    template = deployment["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    pod = template["spec"]
    check(matches(deployment["spec"]["selector"]["matchLabels"], pod_labels),
          "Deployment selector does not match its pod labels")
    check(deployment["spec"].get("replicas") == 3, "Deployment should ask for 3 replicas")

    containers = pod["containers"]
    check(len(containers) == 1, "expected one container")
    container = containers[0]
    port_names = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    check(port_names.get("http") == 8080 and port_names.get("admin") == 9464,
          f"container ports should be http=8080 and admin=9464, got {port_names}")

    # Probes on the admin port.
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path and get.get("port") in ("admin", 9464),
              f"{probe} should GET {path} on the admin port, got {get}")

    # Security context.
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True, "runAsNonRoot missing")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault missing")
    check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem missing")
    check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation should be false")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities should drop ALL")
    check("requests" in container.get("resources", {}), "resource requests missing (the HPA needs them)")

    # Secret and ConfigMap references.
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    env = {e["name"]: e for e in container.get("env", [])}
    for var in ("DIRECTLINE_SECRET", "DIRECTLINE_GATEWAY_TOKEN_KEY"):
        ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
        check(ref.get("name") == secret["metadata"]["name"] and ref.get("key") in secret_keys,
              f"{var} should come from Secret {secret['metadata']['name']} (keys {sorted(secret_keys)}), got {ref}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        check(mount["name"] in volumes, f"volumeMount {mount['name']} has no volume")
    config_volume = [v for v in volumes.values() if "configMap" in v]
    check(len(config_volume) == 1, "expected one ConfigMap volume")
    if config_volume:
        cm_ref = config_volume[0]["configMap"]
        check(cm_ref["name"] == configmap["metadata"]["name"], "ConfigMap volume names another ConfigMap")
        for item in cm_ref.get("items", []):
            check(item["key"] in configmap["data"], f"ConfigMap has no key {item['key']}")
        mount = [m for m in container["volumeMounts"] if m["name"] == config_volume[0]["name"]]
        check(bool(mount) and mount[0]["mountPath"] == "/etc/directline-gateway",
              "the ConfigMap must be mounted at /etc/directline-gateway (the image's --config path)")
    for v in volumes.values():
        if "secret" in v:
            check(v["secret"]["secretName"] == secret["metadata"]["name"], "Secret volume names another Secret")

    # gateway.toml in the ConfigMap and the shutdown budget.
    config = tomllib.loads(configmap["data"]["gateway.toml"])
    check(config.get("listen", "").startswith("0.0.0.0:8080"), "gateway.toml should listen on 0.0.0.0:8080")
    check(config.get("admin_listen", "").startswith("0.0.0.0:9464"), "gateway.toml should serve admin on 0.0.0.0:9464")
    check("secret_file" not in config and "token_key_file" not in config,
          "the secret and token key come from the Secret via env, not from files")
    grace = parse_duration(config.get("shutdown_grace", "20s"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    termination = pod.get("terminationGracePeriodSeconds", 30)
    needed = pre_stop + grace + 1
    check(termination > needed,
          f"terminationGracePeriodSeconds {termination} must exceed preStop {pre_stop} + shutdown_grace {grace:g} + 1")
    print(f"shutdown budget: terminationGracePeriodSeconds {termination} s > preStop sleep {pre_stop} s"
          f" + shutdown_grace {grace:g} s + 1 s = {needed:g} s")
    if write_config:
        with open(write_config, "w", encoding="utf-8") as f:
            f.write(configmap["data"]["gateway.toml"])

    # Service.
    check(matches(service["spec"]["selector"], pod_labels), "Service selector does not match the pods")
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    check(set(service_ports) == {"http", "admin"}, f"Service ports should be http and admin, got {set(service_ports)}")
    for p in service_ports.values():
        check(p["targetPort"] in port_names or p["targetPort"] in port_names.values(),
              f"Service port {p['name']} targets unknown port {p['targetPort']}")

    # HPA and PDB.
    target = hpa["spec"]["scaleTargetRef"]
    check(target["kind"] == "Deployment" and target["name"] == name, "HPA does not target the Deployment")
    check(hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"],
          "Deployment replicas outside the HPA range")
    check(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PDB selector does not match the pods")

    # NetworkPolicy.
    check(matches(netpol["spec"]["podSelector"]["matchLabels"], pod_labels), "NetworkPolicy does not select the pods")
    check(set(netpol["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}, "NetworkPolicy should restrict both directions")
    allowed_in = {p["port"] for rule in netpol["spec"]["ingress"] for p in rule.get("ports", [])}
    check(allowed_in == {8080, 9464}, f"NetworkPolicy ingress ports should be 8080 and 9464, got {allowed_in}")
    allowed_out = {(p.get("protocol", "TCP"), p["port"]) for rule in netpol["spec"]["egress"] for p in rule.get("ports", [])}
    check(allowed_out == {("UDP", 53), ("TCP", 53), ("TCP", 443)},
          f"NetworkPolicy egress should be DNS and TCP 443 only, got {allowed_out}")

    # Ingress.
    annotations = ingress["metadata"].get("annotations", {})
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        value = annotations.get(f"nginx.ingress.kubernetes.io/{key}", "0")
        check(int(value) >= 3600, f"Ingress {key} should be at least 3600, got {value}")
    hash_by = annotations.get("nginx.ingress.kubernetes.io/upstream-hash-by", "")
    variable = hash_by.lstrip("$").strip("{}")
    snippet = controller_cm.get("data", {}).get("http-snippet", "")
    check(re.fullmatch(r"\$\{?[A-Za-z0-9_]+\}?", hash_by) is not None, f"upstream-hash-by should be one variable, got {hash_by!r}")
    check(re.search(r"map\s+\$request_uri\s+\$" + re.escape(variable) + r"\s*\{", snippet) is not None,
          f"the controller http-snippet does not define ${variable}")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            check(backend["name"] == service["metadata"]["name"], "Ingress backend is not the gateway Service")
            check(backend["port"].get("name") == "http" or backend["port"].get("number") == 8080,
                  "Ingress must route to the client port, never the admin port")

    # ServiceMonitor (no schema available offline: allow-list and references).
    check(monitor.get("apiVersion") == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
    spec = monitor.get("spec", {})
    check(set(spec) <= SERVICEMONITOR_SPEC_KEYS, f"unexpected ServiceMonitor spec keys {set(spec) - SERVICEMONITOR_SPEC_KEYS}")
    check(matches(spec.get("selector", {}).get("matchLabels", {}), service["metadata"].get("labels", {})),
          "ServiceMonitor selector does not match the Service labels")
    check(bool(spec.get("endpoints")), "ServiceMonitor has no endpoints")
    for endpoint in spec.get("endpoints", []):
        check(set(endpoint) <= SERVICEMONITOR_ENDPOINT_KEYS,
              f"unexpected ServiceMonitor endpoint keys {set(endpoint) - SERVICEMONITOR_ENDPOINT_KEYS}")
        check(endpoint.get("port") == "admin", "ServiceMonitor must scrape the admin port by name")
        check(endpoint.get("path", "/metrics") == "/metrics", "ServiceMonitor path should be /metrics")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint:
                check(re.fullmatch(r"\d+(ms|s|m|h)", endpoint[key]) is not None, f"ServiceMonitor {key} {endpoint[key]!r}")

    return report()


def report():
    if errors:
        for e in errors:
            print(f"FAIL {e}", file=sys.stderr)
        return 1
    print("manifest cross-checks: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
