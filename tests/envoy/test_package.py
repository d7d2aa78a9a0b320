"""`metricpact package`: metricpact.wasm as an OCI image that istio-agent pulls and accepts.

The layout is checked for self-consistency, pushed with the real `skopeo` to a real registry
(Debian's docker-registry, CNCF distribution), and fetched back the way Istio's Wasm image fetcher
does (pkg/wasm/imagefetcher.go `PrepareFetch` / `extractOCIStandardImage` /
`extractWasmPluginBinary` and pkg/wasm/cache.go `getOrFetch`, Istio 1.28): the manifest digest it
resolves is the value `render --wasm-sha256` must carry; the .wasm file's own sha256 -- what the
README used to say -- never matches."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import pytest
import yaml

import harness
from istio import Process, render

MANIFEST_TYPES = ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"]
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
TAG = "0.1.0"


def package(out: Path, *args: str) -> str:
    result = harness.run_cli("package", "--out", str(out), "--wasm", str(harness.WASM), "--tag", TAG, *args)
    assert result.stdout.endswith("\n") and result.stdout.count("\n") == 1, result.stdout
    return result.stdout.strip()


def blob(layout: Path, digest: str) -> bytes:
    algorithm, hex_ = digest.split(":")
    assert algorithm == "sha256"
    data = (layout / "blobs" / "sha256" / hex_).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hex_, f"blob {digest} does not hash to its name"
    return data


def plugin_from_layer(layer: bytes) -> bytes:
    """extractWasmPluginBinary: a gzipped tar; the first file whose base name is plugin.wasm."""
    with tarfile.open(fileobj=gzip.GzipFile(fileobj=io.BytesIO(layer)), mode="r:") as tar:
        for member in tar:
            if Path(member.name).name == "plugin.wasm":
                return tar.extractfile(member).read()
    raise AssertionError("plugin.wasm not found in the archive")


def test_the_layout_is_self_consistent_reproducible_and_holds_the_module(tmp_path):
    digest = package(tmp_path / "a")
    assert package(tmp_path / "b") == digest
    files = lambda d: {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    assert files(tmp_path / "a") == files(tmp_path / "b"), "packaging the same module twice differs"
    layout = tmp_path / "a"
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    descriptor, = index["manifests"]
    assert descriptor["annotations"] == {"org.opencontainers.image.ref.name": TAG}
    assert descriptor["digest"] == digest and descriptor["mediaType"] == MANIFEST_TYPES[0]
    manifest_bytes = blob(layout, digest)
    assert len(manifest_bytes) == descriptor["size"]
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == MANIFEST_TYPES[0]
    referenced = {digest}
    for d in [manifest["config"], *manifest["layers"]]:
        assert len(blob(layout, d["digest"])) == d["size"], d
        referenced.add(d["digest"])
    assert {f"sha256:{p.name}" for p in (layout / "blobs" / "sha256").iterdir()} == referenced  # nothing stale
    layer, = manifest["layers"]
    assert layer["mediaType"] == OCI_LAYER
    assert plugin_from_layer(blob(layout, layer["digest"])) == harness.WASM.read_bytes()
    config = json.loads(blob(layout, manifest["config"]["digest"]))
    uncompressed = gzip.decompress(blob(layout, layer["digest"]))
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(uncompressed).hexdigest()}"]}
    # The module file's own sha256 is another value altogether.
    assert digest != f"sha256:{hashlib.sha256(harness.WASM.read_bytes()).hexdigest()}"


def test_package_refuses_what_it_cannot_package(tmp_path):
    not_wasm = tmp_path / "x.wasm"
    not_wasm.write_bytes(b"#!/bin/sh\n")
    result = harness.run_cli("package", "--out", str(tmp_path / "out"), "--wasm", str(not_wasm), check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert f"{not_wasm}: not a WebAssembly module" in result.stderr
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    result = harness.run_cli("package", "--out", str(occupied), "--wasm", str(harness.WASM), check=False)
    assert result.returncode == 2 and "is not an OCI image layout: refusing to write into it" in result.stderr
    assert (occupied / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- a real registry, a real push

class Registry(Process):
    """Debian's docker-registry (CNCF distribution) on 127.0.0.1, storing under `workdir`."""

    def __init__(self, workdir: Path):
        self.port = harness.free_port()
        config = workdir / "registry.yml"
        config.write_text(yaml.safe_dump({
            "version": 0.1, "log": {"level": "error"},
            "storage": {"filesystem": {"rootdirectory": str(workdir / "registry-data")}},
            "http": {"addr": f"127.0.0.1:{self.port}"}}))
        super().__init__("docker-registry", [shutil.which("docker-registry") or "docker-registry", "serve", config],
                         workdir / "registry.log")

    def __enter__(self):
        super().__enter__()
        harness.wait_until(self._ready, timeout=20, interval=0.2, what=f"docker-registry on port {self.port}")
        return self

    def _ready(self):
        self.check_running()
        try:
            return harness.http_get(self.port, "/v2/", timeout=2)[0] == 200
        except OSError:
            return False

    def get(self, path: str, accept: list | None = None) -> tuple[bytes, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"Accept": ", ".join(accept or [])})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read(), dict(response.headers)


class ChecksumMismatch(Exception):
    pass


def istio_fetch(registry: Registry, repository: str, reference: str, expected_sha256: str | None) -> bytes:
    """What istio-agent does with `oci://REGISTRY/REPOSITORY:TAG` and a WasmPlugin's `sha256`:
    resolve the manifest (its digest's hex is `dChecksum`), take the last layer of an OCI image
    (must be `application/vnd.oci.image.layer.v1.tar+gzip`) or Docker schema-2 image, extract
    plugin.wasm, check the Wasm magic number -- and refuse when the expected checksum differs."""
    manifest_bytes, headers = registry.get(f"/v2/{repository}/manifests/{reference}", MANIFEST_TYPES)
    actual = hashlib.sha256(manifest_bytes).hexdigest()
    assert headers.get("Docker-Content-Digest") == f"sha256:{actual}"
    if expected_sha256 and actual != expected_sha256:
        raise ChecksumMismatch(f"module downloaded from oci://REGISTRY/{repository}:{reference} has checksum {actual}, "
                               f"which does not match: {expected_sha256}")
    manifest = json.loads(manifest_bytes)
    last = manifest["layers"][-1]
    want = DOCKER_LAYER if manifest["mediaType"] == MANIFEST_TYPES[1] else OCI_LAYER
    assert last["mediaType"] == want, f"invalid media type {last['mediaType']} (expect {want})"
    layer, _ = registry.get(f"/v2/{repository}/blobs/{last['digest']}")
    assert hashlib.sha256(layer).hexdigest() == last["digest"].split(":")[1]
    module = plugin_from_layer(layer)
    assert len(module) >= 8 and module[:4] == b"\0asm", "fetched Wasm binary is invalid"
    return module


def test_a_pushed_image_loads_with_the_digest_package_prints_and_not_with_the_files_sha256(tmp_path):
    layout = tmp_path / "oci"
    digest = package(layout)
    hex_ = digest.removeprefix("sha256:")
    with Registry(tmp_path) as registry:
        push = subprocess.run(["skopeo", "copy", "--insecure-policy", "--preserve-digests", "--dest-tls-verify=false",
                               f"oci:{layout}:{TAG}", f"docker://127.0.0.1:{registry.port}/metricpact:{TAG}"],
                              capture_output=True, text=True, timeout=120)
        assert push.returncode == 0, push.stderr
        # The render for that image, with the digest package printed, as istio-agent gets it.
        rendered = render(harness.ROOT / "contracts/http-server.yaml", tmp_path / "render",
                          "--wasm-url", f"oci://127.0.0.1:{registry.port}/metricpact:{TAG}", "--wasm-sha256", digest)
        plugin = rendered.docs("wasmplugin.yaml")[0]["spec"]
        assert plugin["sha256"] == hex_
        assert istio_fetch(registry, "metricpact", TAG, plugin["sha256"]) == harness.WASM.read_bytes()
        # By digest too (a URL with @sha256: pins it, and is the expected checksum when sha256 is unset).
        assert istio_fetch(registry, "metricpact", digest, None) == harness.WASM.read_bytes()
        # The old advice, `sha256sum metricpact.wasm`: istio-agent refuses the module (and FAIL_OPEN
        # then replaces the filter by an allow-all RBAC filter: metricpact silently absent).
        with pytest.raises(ChecksumMismatch, match="which does not match"):
            istio_fetch(registry, "metricpact", TAG, hashlib.sha256(harness.WASM.read_bytes()).hexdigest())


# ---------------------------------------------------------------- render's module reference

def test_render_takes_the_digest_an_oci_url_pins_and_refuses_what_istio_would(tmp_path):
    hex_ = "ab" * 32
    contract = str(harness.ROOT / "contracts/http-server.yaml")
    url = f"oci://registry.example.com/metricpact@sha256:{hex_}"
    r = render(contract, tmp_path / "pinned", "--wasm-url", url)
    for file in ("wasmplugin.yaml", "trafficextension.yaml"):
        spec = r.docs(file)[0]["spec"]
        module = spec.get("wasm", spec)
        assert (module["url"], module["sha256"]) == (url, hex_)
    code = r.docs("envoyfilter.yaml")[0]["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]["vm_config"]["code"]
    assert code["remote"]["sha256"] == hex_
    # `sha256:HEX`, as package prints it, is accepted; a different pinned digest is not.
    r = render(contract, tmp_path / "prefixed", "--wasm-url", url, "--wasm-sha256", f"sha256:{hex_}")
    assert r.docs("wasmplugin.yaml")[0]["spec"]["sha256"] == hex_
    for args, message in [
        (["--wasm-url", url, "--wasm-sha256", "cd" * 32], f"differs from the digest the URL pins ({hex_})"),
        (["--wasm-url", "oci://registry.example.com/metricpact:0.1.0"], "an oci:// --wasm-url needs the image manifest digest"),
        (["--wasm-url", "https://example.com/metricpact.wasm"], "an https:// --wasm-url needs --wasm-sha256"),
        (["--wasm-url", "oci://r.example.com/m@sha256:abc"], "is not 64 lowercase hex digits"),
    ]:
        result = harness.run_cli("render", "--contract", contract, "--out", str(tmp_path / "x"), *args, check=False)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
