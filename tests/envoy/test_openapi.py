"""Routes generated from an OpenAPI document, in a real Envoy: `metricpact routes SPEC --contract C
--write` (the real CLI) writes the contract's routes, the real metricpact.wasm runs it, and every
example request of the document, sent with each of its operations' methods, is counted under
exactly its path's template; requests the document does not describe (the bare base path, a
server version it does not list, a value its schema refuses) under `_OTHER`."""

from collections import Counter

import pytest

from harness import ROOT, run_cli, sidecar, write_contract

REQUESTS = "http_server_requests_total"
DATA = ROOT / "tests/data/openapi"

# No routes: `metricpact routes --write` adds them. Two labels keep every series exact.
CONTRACT = """# The document's API, counted per route template and method.
format: metricpact/v1
name: {name}
version: 1.0.0
labels:
  - name: http_request_method
    from: request.method
  - name: http_route
    from: request.route
"""

UUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def issues_api():
    """issues-api.yaml: (methods, request path, the route it must get)."""
    requests = [("GET", "/health", "/health"), ("GET", "/health?verbose=1", "/health")]
    for v in ("v1", "v2"):
        api = f"/api/{v}"
        requests += [
            # /users/me is declared after /users/{id}; its literal segment still comes first.
            ("GET", f"{api}/users/me", f"{api}/users/me"),
            ("GET PATCH DELETE", f"{api}/users/42", f"{api}/users/{{id}}"),
            ("GET", f"{api}/users/42/repos", f"{api}/users/{{id}}/repos"),
            ("GET", f"{api}/orgs/acme", f"{api}/orgs/{{org}}"),
            ("GET POST", f"{api}/orgs/acme/repos", f"{api}/orgs/{{org}}/repos"),
            ("GET", f"{api}/orgs/acme/repos/www", f"{api}/orgs/{{org}}/repos/{{repo}}"),
            ("GET POST", f"{api}/orgs/acme/repos/www/issues", f"{api}/orgs/{{org}}/repos/{{repo}}/issues"),
            ("GET PATCH", f"{api}/orgs/acme/repos/www/issues/42", f"{api}/orgs/{{org}}/repos/{{repo}}/issues/{{number}}"),
            ("GET", f"{api}/orgs/acme/repos/www/issues/42/comments",
             f"{api}/orgs/{{org}}/repos/{{repo}}/issues/{{number}}/comments"),
            ("GET", f"{api}/orgs/acme/repos/www/releases/latest", f"{api}/orgs/{{org}}/repos/{{repo}}/releases/latest"),
            ("GET", f"{api}/orgs/acme/repos/www/releases/releaseId-1",
             f"{api}/orgs/{{org}}/repos/{{repo}}/releases/{{releaseId}}"),
            ("GET", f"{api}/issues/open", f"{api}/issues/{{state}}"),
            ("GET", f"{api}/attachments/{UUID}", f"{api}/attachments/{{attachmentId}}"),
            ("GET", f"{api}/reports/summary.csv", f"{api}/reports/summary.{{format}}"),
            ("GET", f"{api}/reports/q3-2024.csv", f"{api}/reports/{{reportId}}.{{format}}"),
            ("GET", f"{api}/reports/q3-2024", f"{api}/reports/{{reportId}}"),
        ]
    requests += [
        ("POST", "/v1/uploads", "/v1/uploads"),
        # Beyond the examples: a query string, the base path alone, a version the servers do
        # not list, no base path, values the schemas refuse, a format outside the enum.
        ("GET", "/api/v2/users/42?tab=repos&page=2", "/api/v2/users/{id}"),
        ("GET", "/api/v1/users/me/repos", "_OTHER"),
        ("GET", "/api/v1", "_OTHER"),
        ("GET", "/api/v1/", "_OTHER"),
        ("GET", "/api/v3/users/42", "_OTHER"),
        ("GET", "/users/42", "_OTHER"),
        ("GET", "/api/v1/users/abc", "_OTHER"),
        ("GET", "/api/v2/issues/all", "_OTHER"),
        ("GET", "/api/v1/reports/q3-2024.pdf", "/api/v1/reports/{reportId}.{format}"),
        ("GET", "/api/v1/reports/q3-2024.txt", "/api/v1/reports/{reportId}"),
    ]
    return requests


def store_api():
    """store-api.json (OpenAPI 3.1, base path /store from a relative server URL)."""
    return [
        ("GET PUT", "/store/products/1001", "/store/products/{productId}"),
        ("GET POST", "/store/products", "/store/products"),
        ("GET", "/store/products/featured", "/store/products/featured"),
        ("GET DELETE", f"/store/products/1001/reviews/{UUID}", "/store/products/{productId}/reviews/{reviewId}"),
        ("GET DELETE", "/store/carts/c-1001", "/store/carts/{cartId}"),
        ("PUT DELETE", "/store/carts/c-1001/items/ABC-1234", "/store/carts/{cartId}/items/{sku}"),
        ("POST", "/store/orders/42:cancel", "/store/orders/{orderId}:cancel"),
        ("GET", "/store/orders/42", "/store/orders/{orderId}"),
        ("GET", "/store/products/featured?page=2", "/store/products/featured"),
        ("POST", "/store/orders/42:refund", "_OTHER"),
        ("GET", "/store/products/abc", "_OTHER"),
        ("GET", "/products/1001", "_OTHER"),
    ]


def petstore_swagger():
    """petstore-swagger.yaml (Swagger 2.0, basePath /v2)."""
    return [
        ("POST", "/v2/pet/42/uploadImage", "/v2/pet/{petId}/uploadImage"),
        ("POST PUT", "/v2/pet", "/v2/pet"),
        ("GET", "/v2/pet/findByStatus", "/v2/pet/findByStatus"),
        ("GET", "/v2/pet/findByTags", "/v2/pet/findByTags"),
        ("GET POST DELETE", "/v2/pet/42", "/v2/pet/{petId}"),
        ("POST", "/v2/store/order", "/v2/store/order"),
        ("GET", "/v2/store/order/10", "/v2/store/order/{orderId}"),   # GET's maximum: 10
        ("DELETE", "/v2/store/order/42", "/v2/store/order/{orderId}"),
        ("GET", "/v2/store/inventory", "/v2/store/inventory"),
        ("POST", "/v2/user/createWithArray", "/v2/user/createWithArray"),
        ("POST", "/v2/user/createWithList", "/v2/user/createWithList"),
        ("GET PUT DELETE", "/v2/user/user1", "/v2/user/{username}"),
        # /user/{username} comes first in the document; login and logout still get their own.
        ("GET", "/v2/user/login?username=user1&password=secret", "/v2/user/login"),
        ("GET", "/v2/user/logout", "/v2/user/logout"),
        ("POST", "/v2/user", "/v2/user"),
        ("GET", "/v2/pet/findByTags?tags=dog&tags=cat", "/v2/pet/findByTags"),  # (the upstream reads ?status=)
        ("GET", "/v2/pet/-1", "/v2/pet/{petId}"),            # an integer without a minimum
        ("GET", "/v2/store/order/-1", "_OTHER"),              # minimum: 1
        ("GET", "/pet/42", "_OTHER"),
        ("GET", "/v2", "_OTHER"),
    ]


@pytest.mark.parametrize("spec, requests", [
    ("issues-api.yaml", issues_api()),
    ("store-api.json", store_api()),
    ("petstore-swagger.yaml", petstore_swagger()),
])
def test_each_example_request_is_counted_under_its_paths_template(workdir, upstream, spec, requests):
    name = spec.split(".")[0]
    contract = write_contract(workdir, CONTRACT.format(name=name))
    document = str(DATA / spec)
    run_cli("routes", "--openapi", document, "--contract", str(contract), "--write")
    text = contract.read_text()
    assert text.startswith(CONTRACT.format(name=name) + "\nroutes:\n"), text
    # What was written covers the document (check exits 0) before Envoy runs it.
    run_cli("check", str(contract), "--openapi", document)

    expected = Counter()
    with sidecar(workdir, contract, upstream.port) as envoy:
        for methods, path, route in requests:
            for method in methods.split():
                status, _ = envoy.request(method, path)
                assert status == 200, (method, path)
                expected[(method, route)] += 1
        expo = envoy.scrape()
    counted = Counter()
    for s in expo.series(REQUESTS):
        assert set(s.labels) == {"http_request_method", "http_route"}, s.labels
        key = (s.labels["http_request_method"], s.labels["http_route"])
        assert key not in counted, f"two series for {key}"
        counted[key] = int(s.value)
    assert counted == expected
