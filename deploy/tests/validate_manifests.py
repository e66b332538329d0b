"""Validates deploy/ offline: every Kubernetes manifest against the core schemas
(kubernetes-validate, strict: unknown fields are errors), every RoleBasedGroup against
the RBG CRD's schema (../shared/k8s, strict in the same way) with each role's pod
template as a core PodTemplate, the reference topology and the conventions (secrets
only from Secrets, probes on /health, Prometheus annotations, the OpenAI Service),
every tierkv configuration in a ConfigMap or Secret with `tierkv config show`, the
Grafana dashboard's metrics against the names tierkv exports, and the Dockerfiles.
It first checks that the validators reject broken manifests, so that it can fail.

usage: python3 deploy/tests/validate_manifests.py TIERKV_BINARY CRD_FILE   (CRD_FILE `-`: none)
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = kubernetes_validate.latest_version()
errors: list[str] = []


def fail(where: str, why: str) -> None:
    errors.append(f"{where}: {why}")


def strict(schema: object) -> object:
    """The CRD schema with unknown fields refused (what `kubectl --validate=strict`
    reports), except where the schema preserves them."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def rbg_validators(crd_file: Path) -> dict[str, jsonschema.Draft4Validator]:
    crd = yaml.safe_load(crd_file.read_text())
    group = crd["spec"]["group"]
    return {
        f"{group}/{v['name']}": jsonschema.Draft4Validator(strict(v["schema"]["openAPIV3Schema"]))
        for v in crd["spec"]["versions"]
    }


def core_errors(doc: dict) -> str | None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{e.message} at {'/'.join(map(str, e.path))}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return f"no schema: {e}"
    return None


def rbg_errors(doc: dict, validators: dict | None) -> list[str]:
    out = []
    if validators is not None:
        v = validators.get(doc["apiVersion"])
        if v is None:
            return [f"no RoleBasedGroup schema for {doc['apiVersion']}"]
        out = [f"{e.message} at {'/'.join(map(str, e.path))}" for e in v.iter_errors(doc)]
    for role in doc["spec"]["roles"]:
        if "template" in role:
            tpl = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role["name"]}, "template": role["template"]}
            if (e := core_errors(tpl)) is not None:
                out.append(f"role {role['name']}: {e}")
    return out


def self_test(validators: dict | None) -> None:
    """The validators must refuse what a cluster would refuse."""
    rbg = yaml.safe_load((DEPLOY / "k8s/vllm-2p1d/rolebasedgroup.yaml").read_text())
    if validators is not None:
        bad = copy.deepcopy(rbg)
        bad["spec"]["roles"][0]["replica"] = 2  # a typo of `replicas`
        assert rbg_errors(bad, validators), "the RBG schema accepted an unknown field"
        bad = copy.deepcopy(rbg)
        del bad["spec"]["roles"][1]["replicas"]
        assert rbg_errors(bad, validators), "the RBG schema accepted a role without replicas"
    bad = copy.deepcopy(rbg)
    bad["spec"]["roles"][0]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 7
    assert rbg_errors(bad, validators), "a role's pod template was not validated"
    svc = yaml.safe_load((DEPLOY / "k8s/common/service.yaml").read_text())
    bad = copy.deepcopy(svc)
    bad["spec"]["ports"][0]["prot"] = 8000
    assert core_errors(bad), "the core schema accepted an unknown field"


def documents() -> list[tuple[str, dict]]:
    docs = []
    for f in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        for i, d in enumerate(yaml.safe_load_all(f.read_text())):
            if d is not None:
                docs.append((f"{f.relative_to(ROOT)}#{i}", d))
    return docs


def pod_specs(doc: dict) -> list[tuple[str, dict, dict]]:
    """(name, pod template metadata, pod spec) of every workload in a document."""
    if doc["kind"] == "RoleBasedGroup":
        return [(r["name"], r["template"].get("metadata", {}), r["template"]["spec"]) for r in doc["spec"]["roles"]]
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
        t = doc["spec"]["template"]
        return [(doc["metadata"]["name"], t.get("metadata", {}), t["spec"])]
    return []


SECRETISH = re.compile(r"TOKEN|SECRET|PASSWORD|ACCESS_KEY", re.I)


def check_conventions(where: str, doc: dict) -> None:
    for name, meta, spec in pod_specs(doc):
        at = f"{where} {name}"
        ann = meta.get("annotations", {})
        if doc["kind"] != "StatefulSet" or "etcd" not in name:
            if ann.get("prometheus.io/scrape") != "true" or "prometheus.io/port" not in ann:
                fail(at, "no Prometheus scrape annotations")
        for c in spec["containers"]:
            for e in c.get("env", []):
                if SECRETISH.search(e["name"]) and "value" in e:
                    fail(at, f"{c['name']}: secret {e['name']} given as a literal, not from a Secret")
            for a in c.get("args", []) + c.get("command", []):
                if re.search(r"token=|secret_access_key|AWS_SECRET", a, re.I):
                    fail(at, f"{c['name']}: a secret on the command line: {a[:60]}")
            env = {e["name"]: e for e in c.get("env", [])}
            keyed = {"vllm": "VLLM_API_KEY", "engine": "TIERKV_API_KEY", "frontend": "TIERKV_API_KEY"}
            if c["name"] in keyed:
                var = env.get(keyed[c["name"]], {})
                if "secretKeyRef" not in var.get("valueFrom", {}):
                    fail(at, f"{c['name']}: its HTTP API has no key ({keyed[c['name']]} from a Secret)")
            if c["name"] in ("vllm", "engine", "frontend", "etcd"):
                for probe in ("readinessProbe", "livenessProbe"):
                    path = c.get(probe, {}).get("httpGet", {}).get("path")
                    if path != "/health":
                        fail(at, f"{c['name']}: {probe} is not on /health")


def check_topology(docs: list[tuple[str, dict]]) -> None:
    rbgs = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "RoleBasedGroup"}
    for name in ("tierkv-qwen3-32b", "tierkv-engine-smollm2"):
        if name not in rbgs:
            fail("topology", f"no RoleBasedGroup {name}")
            continue
        roles = {r["name"]: r for r in rbgs[name]["spec"]["roles"]}
        got = {k: roles[k]["replicas"] for k in roles}
        if got != {"prefill": 2, "decode": 1, "frontend": 1}:
            fail(name, f"roles and replicas {got}, not 2 prefill + 1 decode + 1 frontend")
        if set(roles.get("frontend", {}).get("dependencies", [])) != {"prefill", "decode"}:
            fail(name, "the frontend role is not ordered after the workers")
    vllm = rbgs.get("tierkv-qwen3-32b")
    if vllm:
        for r in vllm["spec"]["roles"]:
            if r["name"] == "frontend":
                continue
            c = r["template"]["spec"]["containers"][0]
            args = " ".join(c["args"])
            for want in ("--tensor-parallel-size=2", "--block-size=128", '"kv_connector":"TierkvConnector"'):
                if want not in args:
                    fail(f"tierkv-qwen3-32b {r['name']}", f"vLLM args lack {want}")
            role = {"prefill": "kv_producer", "decode": "kv_consumer"}[r["name"]]
            ktc = json.loads(next(a for a in c["args"] if a.startswith("--kv-transfer-config=")).split("=", 1)[1])
            if ktc["kv_role"] != role:
                fail(f"tierkv-qwen3-32b {r['name']}", f"kv_role {ktc['kv_role']}, not {role}")
            if c["resources"]["limits"].get("nvidia.com/gpu") != 2:
                fail(f"tierkv-qwen3-32b {r['name']}", "not 2 GPUs (TP 2)")
            if not any(x["name"] == "register" for x in r["template"]["spec"]["containers"]):
                fail(f"tierkv-qwen3-32b {r['name']}", "no `tierkv register` sidecar")
    svc = [d for _, d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "tierkv-openai"]
    if not svc or svc[0]["spec"]["ports"][0]["port"] != 8000:
        fail("service", "no OpenAI Service on port 8000")
    elif vllm:
        sel = svc[0]["spec"]["selector"]
        fe = next(r for r in vllm["spec"]["roles"] if r["name"] == "frontend")
        labels = fe["template"]["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in sel.items()):
            fail("service", f"selector {sel} does not match the frontend's labels {labels}")
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in docs}
    for want in [("StatefulSet", "tierkv-etcd"), ("DaemonSet", "tierkv-node-cache"), ("PersistentVolumeClaim", "tierkv-model")]:
        if want not in kinds:
            fail("topology", f"no {want[0]} {want[1]}")


def check_configs(docs: list[tuple[str, dict]], tierkv: Path) -> None:
    engine_keys = tomllib.loads((DEPLOY / "engine.example.toml").read_text())
    for where, d in docs:
        if d["kind"] not in ("ConfigMap", "Secret"):
            continue
        data = d.get("data") or d.get("stringData") or {}
        for key, text in data.items():
            if not key.endswith(".toml"):
                continue
            if d["kind"] == "ConfigMap" and re.search(r"^\s*(token|secret_access_key|access_key_id)\s*=", text, re.M):
                fail(f"{where} {key}", "a secret in a ConfigMap")
            parsed = tomllib.loads(text)
            store = parsed.get("store", parsed) if "engine" in parsed else parsed
            for table in ("engine", "disagg"):
                for k in parsed.get(table, {}):
                    if k not in engine_keys.get(table, {}):
                        fail(f"{where} {key}", f"[{table}] {k} is not an engine setting")
            with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
                f.write(_toml(store))
                f.flush()
                out = subprocess.run([str(tierkv), "config", "show", "--config", f.name], capture_output=True, text=True)
            if out.returncode != 0:
                fail(f"{where} {key}", f"tierkv config show: {out.stderr.strip()[-300:]}")
            elif "replace" in out.stdout and "token" in out.stdout.lower():
                fail(f"{where} {key}", "`config show` printed the token")


def _toml(d: dict, prefix: str = "") -> str:
    """A minimal TOML writer for the store tables (scalars, tables, arrays of tables)."""
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v, False))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            tables.append((k, v, True))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    out = "\n".join(lines) + "\n"
    for k, v, many in tables:
        name = f"{prefix}{k}"
        for item in v if many else [v]:
            out += f"\n{'[[' if many else '['}{name}{']]' if many else ']'}\n" + _toml(item, name + ".")
    return out


def exported_metrics() -> set[str]:
    names = set()
    for f in [ROOT / "kvstore/src/metrics.rs", ROOT / "engine/src/metrics.rs", ROOT / "engine/serving/src/metrics.rs", ROOT / "engine/python/python/tierkv/vllm/stats.py"]:
        names |= set(re.findall(r'"(tierkv_[a-z_]+)"', f.read_text()))
    return names


def check_dashboard() -> None:
    dash = json.loads((DEPLOY / "grafana/tierkv-dashboard.json").read_text())
    exported = exported_metrics()
    if not dash.get("panels"):
        fail("dashboard", "no panels")
    for p in dash.get("panels", []):
        if not p.get("targets"):
            fail(f"dashboard panel {p.get('title')}", "no queries")
        for t in p.get("targets", []):
            for m in re.findall(r"tierkv_[a-z_]+", t["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", m)
                if m not in exported and base not in exported:
                    fail(f"dashboard panel {p['title']}", f"{m} is not a metric tierkv exports")


def check_dockerfiles() -> None:
    files = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
    if len(files) < 3:
        fail("docker", f"{len(files)} Dockerfiles, want tierkv, vllm-cpu and vllm-cuda")
    for f in files:
        final = f.read_text().split("\nFROM ")[-1]
        users = re.findall(r"^USER\s+(\S+)", final, re.M)
        if not users or users[-1] in ("0", "root"):
            fail(str(f.relative_to(ROOT)), "the final stage does not run as a non-root user")
        if not re.search(r"^HEALTHCHECK ", final, re.M):
            fail(str(f.relative_to(ROOT)), "no HEALTHCHECK")
        if re.search(r"^ADD\s+https?://", f.read_text(), re.M):
            fail(str(f.relative_to(ROOT)), "ADD from a URL")


def main() -> int:
    tierkv, crd = Path(sys.argv[1]), sys.argv[2]
    validators = None if crd == "-" else rbg_validators(Path(crd))
    if validators is None:
        print("NOTE: no RoleBasedGroup CRD given: the RoleBasedGroups' own schema is not checked")
    self_test(validators)
    docs = documents()
    for where, d in docs:
        errs = rbg_errors(d, validators) if d["kind"] == "RoleBasedGroup" else [e for e in [core_errors(d)] if e]
        for e in errs:
            fail(where, e)
        check_conventions(where, d)
    check_topology(docs)
    check_configs(docs, tierkv)
    check_dashboard()
    check_dockerfiles()
    for e in errors:
        print("FAIL", e)
    print(f"{len(docs)} manifests (Kubernetes {K8S_VERSION}), dashboard and Dockerfiles: {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
