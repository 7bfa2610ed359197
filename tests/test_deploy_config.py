"""The deployment files agree with each other and with what tests/test_replicas.py runs.

No container engine or cluster here: docker-compose.yml's scaled profile and deploy/kubernetes/ are parsed and
checked against deploy/nginx.conf.template, scripts/serve-replicas and the Dockerfile; the manifests are
validated offline against Kubernetes' schemas (kubernetes-validate) and the compose file against the
Compose specification (check-jsonschema); nginx itself checks the rendered template.
"""
from __future__ import annotations

import http.server
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from conftest import ROOT, free_port

yaml = pytest.importorskip("yaml")

KUBERNETES = ROOT / "deploy" / "kubernetes"
TEMPLATE = ROOT / "deploy" / "nginx.conf.template"


def serve_replicas():
    """scripts/serve-replicas as a module (it has no .py suffix)."""
    loader = SourceFileLoader("serve_replicas", str(ROOT / "scripts" / "serve-replicas"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def health_path() -> str:
    """The path the Dockerfile's health check asks for."""
    return re.search(r"http://127\.0\.0\.1:' \+ os\.environ\['SMILEKIT_PORT'\] \+ '(/[^'\"]*)", (ROOT / "Dockerfile").read_text()).group(1)


def manifests() -> dict[str, dict]:
    """Every Kubernetes resource in deploy/kubernetes/, by kind (one of each)."""
    out = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in out, f"two {doc['kind']}s"
            out[doc["kind"]] = doc
    return out


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def scaled_services() -> dict[str, dict]:
    return {name: s for name, s in compose()["services"].items() if "scaled" in s.get("profiles", [])}


def test_template_has_only_the_two_values_to_fill_in():
    assert set(re.findall(r"\$\{(\w+)\}", TEMPLATE.read_text())) == {"SMILEKIT_PROXY_LISTEN", "SMILEKIT_UPSTREAM_SERVERS"}
    assert serve_replicas().READY_PATH == health_path()


def test_nginx_accepts_the_rendered_configuration(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).is_file():
        pytest.skip("nginx is not installed (apt-get install nginx; scripts/setup --test does it)")
    script = serve_replicas()
    site = tmp_path / "smilekit.conf"
    site.write_text(script.render_site("127.0.0.1:8080", ["127.0.0.1:8081", "127.0.0.1:8082"]))
    assert "${" not in site.read_text()
    assert "server 127.0.0.1:8081; server 127.0.0.1:8082;" in site.read_text()
    (tmp_path / "nginx.conf").write_text(script.MAIN_CONF.format(prefix=tmp_path, site=site))
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_file_follows_the_compose_specification(tmp_path):
    pytest.importorskip("check_jsonschema")
    check = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]  # the schema ships in the package
    result = subprocess.run([*check, str(ROOT / "docker-compose.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = compose()
    broken["services"]["proxy"]["depends_on"] = 5
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert subprocess.run([*check, str(tmp_path / "broken.yml")], capture_output=True).returncode != 0


def test_compose_scaled_profile_matches_deploy():
    services = scaled_services()
    replicas = {name: s for name, s in services.items() if s.get("image") == compose()["services"]["app"]["image"]}
    assert len(replicas) >= 2
    proxy, postgres = services["proxy"], services["postgres"]

    # nginx gets the same template as scripts/serve-replicas, through the image's templates folder
    source, target = proxy["volumes"][0].split(":")[:2]
    assert (ROOT / source).resolve() == TEMPLATE and target.startswith("/etc/nginx/templates/") and target.endswith(".template")
    env = proxy["environment"]
    upstreams = re.findall(r"server ([\w.-]+):(\d+);", env["SMILEKIT_UPSTREAM_SERVERS"])
    assert sorted(upstreams) == sorted((name, s["environment"]["SMILEKIT_PORT"]) for name, s in replicas.items())
    assert proxy["ports"][0].rsplit(":", 1)[1] == env["SMILEKIT_PROXY_LISTEN"]
    assert set(proxy["depends_on"]) == set(replicas)

    # one database and one models folder for every replica
    urls = {s["environment"]["SMILEKIT_DB_URL"] for s in replicas.values()}
    assert len(urls) == 1
    url = make_url(urls.pop().replace("${SMILEKIT_PG_PASSWORD:-smilekit}", "pw"))
    assert url.drivername == "postgresql+psycopg2" and url.host == "postgres"
    assert (url.username, url.database) == (postgres["environment"]["POSTGRES_USER"], postgres["environment"]["POSTGRES_DB"])
    for s in replicas.values():
        models = s["environment"]["SMILEKIT_MODELS_DIR"]
        assert f"models:{models}" in s["volumes"]
        assert s["environment"]["SMILEKIT_HOST"] == "0.0.0.0"
        assert s["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "models" in compose()["volumes"]


def test_kubernetes_manifests_validate_offline():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    resources = manifests()
    resources.pop("Kustomization")  # kustomize's own file, not a cluster resource
    for resource in resources.values():
        kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)  # raises if invalid
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does reject a broken manifest
        broken = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
        broken["spec"]["replicas"] = "four"
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_manifests_hold_the_essentials():
    m = manifests()
    listed = set(m["Kustomization"]["resources"])
    assert listed == {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml", "database-secret.example.yaml"}

    deployment, pod = m["Deployment"], m["Deployment"]["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] >= 2
    (container,) = pod["containers"]
    assert container["image"] == compose()["services"]["app"]["image"] == m["Kustomization"]["images"][0]["name"]
    env = {e["name"]: e for e in container["env"]}
    secret = env["SMILEKIT_DB_URL"]["valueFrom"]["secretKeyRef"]
    assert (secret["name"], secret["key"]) == (m["Secret"]["metadata"]["name"], "url") and "url" in m["Secret"]["stringData"]
    port = container["ports"][0]
    assert str(port["containerPort"]) == env["SMILEKIT_PORT"]["value"] and env["SMILEKIT_HOST"]["value"] == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": health_path(), "port": port["name"]}

    # the shared models folder: a ReadWriteMany claim mounted where SMILEKIT_MODELS_DIR points
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert mount["name"] == volume["name"] and mount["mountPath"] == env["SMILEKIT_MODELS_DIR"]["value"]
    assert volume["persistentVolumeClaim"]["claimName"] == m["PersistentVolumeClaim"]["metadata"]["name"]
    assert m["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]

    # visitors stay on one pod: ClientIP in the cluster, a cookie at the Ingress, long websocket timeouts
    service = m["Service"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    ingress = m["Ingress"]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert notes["nginx.ingress.kubernetes.io/session-cookie-name"] == "smilekit_replica"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": service["spec"]["ports"][0]["name"]}}


def test_nginx_keeps_each_visitor_on_one_replica_and_passes_websocket_upgrades(tmp_path):
    """The rendered configuration in front of two plain HTTP servers that answer with their name and what they got."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).is_file():
        pytest.skip("nginx is not installed (apt-get install nginx; scripts/setup --test does it)")

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"replica": self.server.server_port, "upgrade": self.headers.get("Upgrade"),
                               "connection": self.headers.get("Connection"), "host": self.headers.get("Host")}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    backends = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo) for _ in range(2)]
    for backend in backends:
        threading.Thread(target=backend.serve_forever, daemon=True).start()
    script, port = serve_replicas(), free_port()
    site = tmp_path / "smilekit.conf"
    site.write_text(script.render_site(f"127.0.0.1:{port}", [f"127.0.0.1:{b.server_port}" for b in backends]))
    (tmp_path / "nginx.conf").write_text(script.MAIN_CONF.format(prefix=tmp_path, site=site))
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")])

    def get(cookie: str | None = None, **headers) -> tuple[dict, str | None]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/kernels/x/channels", headers=headers)
        if cookie:
            request.add_header("Cookie", f"smilekit_replica={cookie}")
        with urllib.request.urlopen(request, timeout=5) as response:
            set_cookie = response.headers.get("Set-Cookie")
            return json.loads(response.read()), set_cookie

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "error.log").read_text()
                time.sleep(0.2)
        placed = {}
        for _ in range(40):  # new visitors: each gets a cookie, and both replicas get visitors
            answer, set_cookie = get()
            cookie = re.fullmatch(r"smilekit_replica=([0-9a-f]{32}); Path=/; HttpOnly; SameSite=Lax", set_cookie).group(1)
            placed[cookie] = answer["replica"]
        assert set(placed.values()) == {b.server_port for b in backends}
        for cookie, replica in list(placed.items())[:10]:  # a returning visitor always reaches the same replica
            for _ in range(3):
                answer, set_cookie = get(cookie, Upgrade="websocket", Connection="Upgrade")
                assert answer["replica"] == replica and set_cookie is None
                assert (answer["upgrade"], answer["connection"]) == ("websocket", "upgrade")
                assert answer["host"] == f"127.0.0.1:{port}"  # with its port: Jupyter compares it with the Origin
        _, set_cookie = get("not-a-key")  # a cookie that nginx did not give is replaced
        assert set_cookie.startswith("smilekit_replica=")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        for backend in backends:
            backend.shutdown()
