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
  * the rotation path: no DIRECTLINE_SECRET / DIRECTLINE_GATEWAY_TOKEN_KEY variables (they
    win over files and are read only at start); secret_file and token_key_file name keys
    of the Secret inside its mount, mounted without subPath (so the kubelet refreshes
    them), and file_watch_interval is on;
  * trusted_proxies is set (every request comes from the ingress controller) and port
    8080 is admitted by the NetworkPolicy from one namespace only;
  * terminationGracePeriodSeconds > preStop sleep + max(shutdown_grace + 1 s,
    stream.drain_period + stream.drain_spread + 2 s) + 1 s (from the ConfigMap's
    gateway.toml);
  * the HTTPRoute (the default front) attaches to the Gateway's listener for its host and
    sends /v3/directline to the client port with a request timeout of at least an hour
    (schemas: check_gateway_api.py);
  * the legacy Ingress (ingress-nginx, retired) hashes on a variable the controller
    ConfigMap's http-snippet defines, with WebSocket timeouts of at least an hour.

Usage: check_manifests.py RENDERED.yaml SECRET_EXAMPLE.yaml CONTROLLER_CONFIGMAP.yaml
           LEGACY_INGRESS.yaml [--write-config PATH]
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
    if len(argv) not in (5, 7):
        print(__doc__, file=sys.stderr)
        return 2
    rendered, secret_path, controller_path, legacy_ingress_path = argv[1:5]
    write_config = argv[6] if len(argv) == 7 and argv[5] == "--write-config" else None

    objects = load_all(rendered)
    secret = one(load_all(secret_path), "Secret")
    controller_cm = one(load_all(controller_path), "ConfigMap")

    deployment = one(objects, "Deployment")
    service = one(objects, "Service")
    configmap = one(objects, "ConfigMap")
    hpa = one(objects, "HorizontalPodAutoscaler")
    pdb = one(objects, "PodDisruptionBudget")
    netpol = one(objects, "NetworkPolicy")
    ingress = one(load_all(legacy_ingress_path), "Ingress")
    check(not any(o.get("kind") == "Ingress" for o in objects),
          "the kustomization should not apply the legacy Ingress (the default front is the Gateway API)")
    gateway = one(objects, "Gateway")
    route = one(objects, "HTTPRoute")
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
        check(var not in env,
              f"{var} must not be set: it wins over the mounted file and is read only at start, so a Secret rotation would not reach it")
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
    # The rotation path: the Secret's keys as mounted files the gateway watches.
    secret_volumes = [v for v in volumes.values() if "secret" in v]
    secret_mounts = [m for m in container.get("volumeMounts", [])
                     if m["name"] in {v["name"] for v in secret_volumes}]
    check(len(secret_mounts) == 1 and "subPath" not in secret_mounts[0],
          "the Secret must be mounted once, as a directory (a subPath mount is never refreshed)")
    mount_dir = secret_mounts[0]["mountPath"].rstrip("/") if secret_mounts else ""
    for key in ("secret_file", "token_key_file"):
        path = config.get(key, "")
        directory, _, file_name = path.rpartition("/")
        check(directory == mount_dir and file_name in secret_keys,
              f"{key} should be a key of the Secret under {mount_dir} (keys {sorted(secret_keys)}), got {path!r}")
    for path in config.get("previous_token_key_files", []):
        check(path.rpartition("/")[0] == mount_dir, f"previous_token_key_files entry {path!r} is outside {mount_dir}")
    watch = parse_duration(config.get("file_watch_interval", "10s"))
    check(0 < watch <= 60, f"file_watch_interval should be on and at most 60 s, got {watch:g} s")
    print(f"rotation: secret_file and token_key_file are Secret keys under {mount_dir}, watched every {watch:g} s")

    # Client addresses: every request comes from the ingress controller.
    trusted = config.get("trusted_proxies", [])
    check(bool(trusted), "trusted_proxies is empty: every user would share the ingress controller's rate limit")
    admitted = [rule.get("from", []) for rule in netpol["spec"]["ingress"]
                if 8080 in {p["port"] for p in rule.get("ports", [])}]
    check(len(admitted) == 1 and len(admitted[0]) == 1 and "namespaceSelector" in admitted[0][0],
          "port 8080 must be admitted from the ingress controller's namespace alone (it is what makes trusted_proxies safe)")

    # The shutdown budget: REST grace and the stream drain run side by side.
    grace = parse_duration(config.get("shutdown_grace", "20s"))
    stream = config.get("stream", {})
    drain = parse_duration(stream.get("drain_period", "20s")) + parse_duration(stream.get("drain_spread", "5s"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    termination = pod.get("terminationGracePeriodSeconds", 30)
    needed = pre_stop + max(grace + 1, drain + 2) + 1
    check(termination > needed,
          f"terminationGracePeriodSeconds {termination} must exceed preStop {pre_stop} + max(shutdown_grace {grace:g} + 1,"
          f" drain_period + drain_spread {drain:g} + 2) + 1 = {needed:g}")
    print(f"shutdown budget: terminationGracePeriodSeconds {termination} s > preStop sleep {pre_stop} s"
          f" + max(shutdown_grace {grace:g} s + 1 s, drain {drain:g} s + 2 s) + 1 s = {needed:g} s")
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
    # 4318: OTLP/HTTP to the trace collector ([tracing]), admitted to the monitoring namespace only.
    check(allowed_out == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 4318)},
          f"NetworkPolicy egress should be DNS, TCP 443 and the collector's TCP 4318 only, got {allowed_out}")

    # Gateway API: the route on the Gateway's listener, to the client port, streams an hour.
    listeners = {l["name"]: l for l in gateway["spec"].get("listeners", [])}
    for parent in route["spec"].get("parentRefs", []):
        check(parent.get("name") == gateway["metadata"]["name"], f"HTTPRoute parent {parent} is not the Gateway")
        listener = listeners.get(parent.get("sectionName"), {})
        check(bool(listener), f"HTTPRoute sectionName {parent.get('sectionName')!r} is no Gateway listener")
        check(listener.get("hostname") in route["spec"].get("hostnames", []),
              "the HTTPRoute hostnames should include its listener's hostname")
    for rule in route["spec"].get("rules", []):
        check(any(m.get("path", {}).get("value") == "/v3/directline" for m in rule.get("matches", [])),
              "HTTPRoute rule should match the /v3/directline prefix")
        for backend in rule.get("backendRefs", []):
            check(backend.get("name") == service["metadata"]["name"], "HTTPRoute backend is not the gateway Service")
            check(backend.get("port") == 8080, "HTTPRoute must route to the client port, never the admin port")
        request = rule.get("timeouts", {}).get("request", "")
        seconds = sum(parse_duration(part) for part in re.findall(r"\d+(?:ms|h|m|s)", request))
        check(request == "0s" or seconds >= 3600,
              f"HTTPRoute request timeout should let a stream live an hour (>= 1h or 0s), got {request!r}")

    # Legacy Ingress.
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
