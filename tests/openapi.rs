//! The real `metricpact` binary on real OpenAPI documents: `routes SPEC` prints each document's
//! golden routes block, `routes SPEC --contract C --write` replaces that block only (every other
//! byte of the file kept) and never writes a contract that does not check, and
//! `check C --openapi SPEC` names each path the contract routes elsewhere, with the exit-code
//! convention of every command.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DATA: &str = "tests/data/openapi";
const ISSUES: &str = "tests/data/openapi/issues-api.yaml";

/// Runs the binary in the package root, so documents are named as the golden files name them.
fn metricpact(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metricpact")).current_dir(env!("CARGO_MANIFEST_DIR")).args(args).output().expect("run metricpact")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(DATA).join(name)).unwrap()
}

/// A scratch file of this test process (an absolute path).
fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metricpact-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn routes_prints_each_documents_golden_block() {
    for (spec, block) in [
        ("issues-api.yaml", "issues-api.routes.yaml"),
        ("store-api.json", "store-api.routes.yaml"),
        ("petstore-swagger.yaml", "petstore-swagger.routes.yaml"),
    ] {
        let out = metricpact(&["routes", "--openapi", &format!("{DATA}/{spec}")]);
        assert_eq!(out.status.code(), Some(0), "{spec}: {}", stderr(&out));
        assert_eq!(stdout(&out), golden(block), "{spec}");
        assert_eq!(stderr(&out), "", "{spec}");
    }
}

/// A contract with comments everywhere, sections before and after `routes:`, and a top-level
/// comment that introduces the section after the block.
const BEFORE: &str = "# yaml-language-server: $schema=metricpact.schema.json
# The issue tracker's contract.
format: metricpact/v1   # the only format
name: issues-api
version: 1.2.0

labels:
  - name: http_request_method
    from: request.method
  - name: http_route
    from: request.route       # from the routes below
  - name: http_response_status_code
    from: response.status_code

";
const OLD_ROUTES: &str = "routes:
  # hand-written, to be replaced
  rules:
    - regex: '/api/v1/users/[0-9]+'
      template: /api/v1/users/{id}
    - prefix: /static/
      template: /static/*
  unmatched: other
";
const AFTER: &str = "
# Budgets: this comment belongs to the next section and stays.
cardinality:
  max_values_per_label: 50   # routes included
";

#[test]
fn write_replaces_the_routes_block_and_keeps_every_other_byte() {
    let contract = scratch("issues.yaml", &format!("{BEFORE}{OLD_ROUTES}{AFTER}"));
    let c = contract.to_str().unwrap();
    let out = metricpact(&["routes", "--openapi", ISSUES, "--contract", c, "--write"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        format!(
            "metricpact: the new routes block has no rule `regex: /api/v1/users/[0-9]+` → `/api/v1/users/{{id}}`: {ISSUES} does not list that path\n\
             metricpact: the new routes block has no rule `prefix: /static/` → `/static/*`: {ISSUES} does not list that path\n\
             metricpact: wrote 18 route rules from {ISSUES} to {c}\n"
        )
    );
    assert_eq!(read(&contract), format!("{BEFORE}{}{AFTER}", golden("issues-api.routes.yaml")));
    // What it wrote checks clean, on its own and against the document.
    let check = metricpact(&["check", c, "--openapi", ISSUES]);
    assert_eq!((check.status.code(), stdout(&check)), (Some(0), String::new()), "{}", stderr(&check));
    assert_eq!(stderr(&check), "metricpact: 1 contract(s) OK\n");
    // Again: nothing to do, nothing written.
    let again = metricpact(&["routes", "--openapi", ISSUES, "--contract", c, "--write"]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(stderr(&again), format!("metricpact: {c} is up to date\n"));
    assert_eq!(read(&contract), format!("{BEFORE}{}{AFTER}", golden("issues-api.routes.yaml")));
}

#[test]
fn without_write_the_updated_contract_is_printed_and_the_file_left_alone() {
    let original = format!("{BEFORE}{OLD_ROUTES}{AFTER}");
    let contract = scratch("printed.yaml", &original);
    let out = metricpact(&["routes", "--openapi", ISSUES, "--contract", contract.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{BEFORE}{}{AFTER}", golden("issues-api.routes.yaml")));
    assert_eq!(read(&contract), original);
}

#[test]
fn write_adds_a_routes_block_to_a_contract_without_one_and_keeps_its_unmatched_settings() {
    let contract = scratch("minimal.yaml", "format: metricpact/v1\nname: store\nversion: '1'");
    let c = contract.to_str().unwrap();
    let out = metricpact(&["routes", "--openapi", "tests/data/openapi/store-api.json", "--contract", c, "--write"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(read(&contract), format!("format: metricpact/v1\nname: store\nversion: '1'\n\n{}", golden("store-api.routes.yaml")));

    // `unmatched: raw` and `raw_max_length` are the contract's to choose: they stay.
    let raw = "format: metricpact/v1\nname: pets\nversion: '1'\nroutes:\n  unmatched: raw\n  raw_max_length: 80\n";
    let contract = scratch("raw.yaml", raw);
    let out = metricpact(&["routes", "--openapi", "tests/data/openapi/petstore-swagger.yaml", "--contract", contract.to_str().unwrap(), "--write"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let block = golden("petstore-swagger.routes.yaml").replace("  unmatched: other\n", "  unmatched: raw\n  raw_max_length: 80\n");
    assert_eq!(read(&contract), format!("format: metricpact/v1\nname: pets\nversion: '1'\n{block}"));
}

#[test]
fn write_never_leaves_a_contract_that_does_not_check() {
    // Broken before: its errors, exit 1, nothing written.
    let broken = "format: metricpact/v1\nname: Not_Valid\nversion: '1'\n";
    let contract = scratch("broken.yaml", broken);
    let c = contract.to_str().unwrap();
    let out = metricpact(&["routes", "--openapi", ISSUES, "--contract", c, "--write"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with(&format!("{c}:2:7: error: contract name must be")), "{}", stderr(&out));
    assert_eq!(read(&contract), broken);
    // Broken after: a contract written as one flow mapping has no block to replace, and a block
    // appended to it would not parse.
    let flow = "{format: metricpact/v1, name: flow, version: '1'}\n";
    let contract = scratch("flow.yaml", flow);
    let c = contract.to_str().unwrap();
    let out = metricpact(&["routes", "--openapi", ISSUES, "--contract", c, "--write"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).ends_with(&format!("metricpact: {c} left as it is: with the new routes block it would not check\n")), "{}", stderr(&out));
    assert_eq!(read(&contract), flow);
    // A contract that cannot be read: unusable input.
    let out = metricpact(&["routes", "--openapi", ISSUES, "--contract", "/nonexistent/contract.yaml", "--write"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unusable_documents_exit_2_with_their_problems() {
    let out = metricpact(&["routes", "--openapi", "/nonexistent/api.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("/nonexistent/api.yaml: error: cannot read OpenAPI document: "), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");

    let spec = scratch("not-openapi.yaml", "apiVersion: v1\nkind: ConfigMap\n");
    let out = metricpact(&["routes", "--openapi", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!("{}: error: not an OpenAPI or Swagger document: it has neither `openapi: 3.x` nor `swagger: \"2.0\"`\n", spec.display())
    );

    let spec = scratch("braces.yaml", "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  /users/{id:\n    get: {}\n  /orgs/{org}}: {}\n");
    let out = metricpact(&["routes", "--openapi", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let s = spec.display();
    assert_eq!(
        stderr(&out),
        format!("{s}:4:3: error: path `/users/{{id` has a `{{` without its `}}`\n{s}:6:3: error: path `/orgs/{{org}}}}` has a `}}` without its `{{`\n")
    );

    let spec = scratch("nopaths.json", "{\"openapi\": \"3.1.0\", \"info\": {\"title\": \"t\", \"version\": \"1\"}}");
    let out = metricpact(&["routes", "--openapi", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out), format!("{}: error: has no `paths`: there are no routes to generate\n", spec.display()));

    // A usage error is 2 as well.
    assert_eq!(metricpact(&["routes", "--openapi", ISSUES, "--write"]).status.code(), Some(2));
}

/// The issues API's routes by hand, as they were before the document grew: no /health, no
/// /users/me (so /users/{id} takes it), a template of its own for issues, and v1 only.
const PARTIAL: &str = "format: metricpact/v1
name: issues-api
version: 1.1.0
routes:
  rules:
    - regex: '/api/(?P<version>v1|v2)/users/[^/]+'
      template: /api/${version}/users/{id}
    - regex: '/api/(?P<version>v1|v2)/users/[^/]+/repos'
      template: /api/${version}/users/{id}/repos
    - regex: '/api/(?P<version>v1|v2)/orgs/[^/]+(?:/repos(?:/[^/]+)?)?'
      template: /api/${version}/orgs/...
    - regex: '/api/v1/orgs/[^/]+/repos/[^/]+/issues(?:/[0-9]+)?'
      template: /api/v1/issues
    - regex: '/api/(?P<version>v1|v2)/orgs/[^/]+/repos/[^/]+/issues/[0-9]+/comments'
      template: /api/${version}/orgs/{org}/repos/{repo}/issues/{number}/comments
    - regex: '/api/(?P<version>v1|v2)/orgs/[^/]+/repos/[^/]+/releases/[^/]+'
      template: /api/${version}/orgs/{org}/repos/{repo}/releases/{releaseId}
    - regex: '/api/(?P<version>v1|v2)/(?P<rest>issues/[^/]+|attachments/[^/]+|reports/[^/]+)'
      template: /api/${version}/${rest}
    - exact: /v1/uploads
";

#[test]
fn check_openapi_names_each_path_the_contract_routes_elsewhere() {
    let contract = scratch("partial.yaml", PARTIAL);
    let c = contract.to_str().unwrap();
    let out = metricpact(&["check", c, "--openapi", ISSUES]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let d = "tests/data/openapi/issues-api.yaml";
    let expected = [
        format!("{d}:27:3: error: GET /health: {c} routes `/health` to `_OTHER` (no rule matches), not `/health`"),
        format!("{d}:51:3: error: GET /users/me: {c} routes `/api/v1/users/me` to `/api/v1/users/{{id}}`, not `/api/v1/users/me` (and 1 more example request of this path)"),
        format!("{d}:68:3: error: GET /orgs/{{org}}: {c} routes `/api/v1/orgs/acme` to `/api/v1/orgs/...`, not `/api/v1/orgs/{{org}}` (and 1 more example request of this path)"),
        format!("{d}:76:3: error: GET, POST /orgs/{{org}}/repos: {c} routes `/api/v1/orgs/acme/repos` to `/api/v1/orgs/...`, not `/api/v1/orgs/{{org}}/repos` (and 1 more example request of this path)"),
        format!("{d}:88:3: error: GET /orgs/{{org}}/repos/{{repo}}: {c} routes `/api/v1/orgs/acme/repos/www` to `/api/v1/orgs/...`, not `/api/v1/orgs/{{org}}/repos/{{repo}}` (and 1 more example request of this path)"),
        format!("{d}:97:3: error: GET, POST /orgs/{{org}}/repos/{{repo}}/issues: {c} routes `/api/v1/orgs/acme/repos/www/issues` to `/api/v1/issues`, not `/api/v1/orgs/{{org}}/repos/{{repo}}/issues` (and 1 more example request of this path)"),
        format!("{d}:114:3: error: GET, PATCH /orgs/{{org}}/repos/{{repo}}/issues/{{number}}: {c} routes `/api/v1/orgs/acme/repos/www/issues/42` to `/api/v1/issues`, not `/api/v1/orgs/{{org}}/repos/{{repo}}/issues/{{number}}` (and 1 more example request of this path)"),
        format!("{d}:154:3: error: GET /orgs/{{org}}/repos/{{repo}}/releases/latest: {c} routes `/api/v1/orgs/acme/repos/www/releases/latest` to `/api/v1/orgs/{{org}}/repos/{{repo}}/releases/{{releaseId}}`, not `/api/v1/orgs/{{org}}/repos/{{repo}}/releases/latest` (and 1 more example request of this path)"),
        format!("{d}:163:3: error: GET /issues/{{state}}: {c} routes `/api/v1/issues/open` to `/api/v1/issues/open`, not `/api/v1/issues/{{state}}` (and 1 more example request of this path)"),
        format!("{d}:175:3: error: GET /attachments/{{attachmentId}}: {c} routes `/api/v1/attachments/3fa85f64-5717-4562-b3fc-2c963f66afa6` to `/api/v1/attachments/3fa85f64-5717-4562-b3fc-2c963f66afa6`, not `/api/v1/attachments/{{attachmentId}}` (and 1 more example request of this path)"),
        format!("{d}:186:3: error: GET /reports/{{reportId}}: {c} routes `/api/v1/reports/q3-2024` to `/api/v1/reports/q3-2024`, not `/api/v1/reports/{{reportId}}` (and 1 more example request of this path)"),
        format!("{d}:194:3: error: GET /reports/{{reportId}}.{{format}}: {c} routes `/api/v1/reports/q3-2024.csv` to `/api/v1/reports/q3-2024.csv`, not `/api/v1/reports/{{reportId}}.{{format}}` (and 1 more example request of this path)"),
        format!("{d}:203:3: error: GET /reports/summary.{{format}}: {c} routes `/api/v1/reports/summary.csv` to `/api/v1/reports/summary.csv`, not `/api/v1/reports/summary.{{format}}` (and 1 more example request of this path)"),
    ];
    assert_eq!(stdout(&out), expected.iter().map(|l| format!("{l}\n")).collect::<String>());
    assert_eq!(stderr(&out), "");

    // JSON and GitHub output carry the same findings.
    let json = metricpact(&["check", "--format", "json", c, "--openapi", ISSUES]);
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["findings"].as_array().unwrap().len(), expected.len());
    assert_eq!(v["findings"][0]["file"], d);
    assert_eq!((v["findings"][0]["line"].as_u64(), v["findings"][0]["column"].as_u64()), (Some(27), Some(3)));
    let github = metricpact(&["check", "--format", "github", c, "--openapi", ISSUES]);
    assert!(stdout(&github).starts_with(&format!("::error file={d},line=27,col=3,title=metricpact check::GET /health: ")), "{}", stdout(&github));
}

#[test]
fn check_openapi_follows_the_exit_code_convention() {
    // The generated routes cover their own document.
    let covered = scratch("covered.yaml", &format!("format: metricpact/v1\nname: store\nversion: '1'\n{}", golden("store-api.routes.yaml")));
    let out = metricpact(&["check", covered.to_str().unwrap(), "--openapi", "tests/data/openapi/store-api.json"]);
    assert_eq!((out.status.code(), stdout(&out)), (Some(0), String::new()), "{}", stderr(&out));
    // An unusable document is unusable input, whatever the contracts say.
    let out = metricpact(&["check", covered.to_str().unwrap(), "--openapi", "/nonexistent/api.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).starts_with("/nonexistent/api.yaml: error: cannot read OpenAPI document: "), "{}", stdout(&out));
    // A contract with errors reports them; its routes are not compared.
    let broken = scratch("broken-routes.yaml", "format: metricpact/v1\nname: b\nversion: '1'\nroutes:\n  rules:\n    - regex: '/(x'\n      template: /x\n");
    let out = metricpact(&["check", broken.to_str().unwrap(), "--openapi", ISSUES]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
    assert!(stdout(&out).contains(":6:14: error[route-regex]: regex does not compile"), "{}", stdout(&out));
    // The document's own warnings are warnings: they fail only --strict.
    let spec = scratch("dup.yaml", "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  /items/{id}:\n    get: {}\n  /items/{slug}:\n    get: {}\n");
    let contract = scratch("items.yaml", "format: metricpact/v1\nname: items\nversion: '1'\nroutes:\n  rules:\n    - regex: '/items/[^/]+'\n      template: /items/{id}\n");
    let args = ["check", contract.to_str().unwrap(), "--openapi", spec.to_str().unwrap()];
    let out = metricpact(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        stdout(&out),
        format!("{}:6:3: warning: `/items/{{slug}}` matches the same requests as `/items/{{id}}` (line 4): OpenAPI forbids paths that differ only in parameter names; it gets no rule of its own, its requests get `/items/{{id}}`\n", spec.display())
    );
    assert_eq!(metricpact(&[&args[..], &["--strict"]].concat()).status.code(), Some(1));
    // `routes` says the same on stderr, and still prints the block.
    let out = metricpact(&["routes", "--openapi", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains(":6:3: warning: `/items/{slug}` matches the same requests"), "{}", stderr(&out));
    assert!(stdout(&out).contains("template: /items/{id}\n"));
}
