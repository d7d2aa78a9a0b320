use std::path::{Path, PathBuf};

use super::*;

const DATA: &str = "tests/data/openapi";
const SPECS: &[&str] = &["issues-api.yaml", "store-api.json", "petstore-swagger.yaml"];

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(DATA).join(name)
}

fn load_data(name: &str) -> Spec {
    load(&data(name)).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

fn spec(text: &str) -> Spec {
    from_text(Path::new("api.yaml"), text).unwrap_or_else(|e| panic!("{e:?}"))
}

fn problems(text: &str) -> Vec<String> {
    match from_text(Path::new("api.yaml"), text) {
        Ok(s) => panic!("expected errors, got {:?}", s.routes),
        Err(diags) => diags.iter().map(|d| d.to_string()).collect(),
    }
}

/// `(regex or exact, template)` of each rule.
fn rules(spec: &Spec) -> Vec<(String, String)> {
    spec.routes
        .iter()
        .map(|r| match &r.rule {
            Rule::Exact(p) => (format!("exact {p}"), p.clone()),
            Rule::Regex { regex, template } => (regex.clone(), template.clone()),
        })
        .collect()
}

const HEAD: &str = "openapi: 3.0.3\ninfo: {title: t, version: '1'}\n";

#[test]
fn each_document_gives_its_golden_routes_block() {
    for name in SPECS {
        let golden_name = format!("{}.routes.yaml", name.rsplit_once('.').unwrap().0);
        let golden = std::fs::read_to_string(data(&golden_name)).unwrap();
        let shown = format!("{DATA}/{name}");
        assert_eq!(routes_block(&load_data(name), &shown, Unmatched::Other, None), golden, "{name}");
    }
}

#[test]
fn every_example_routes_to_its_own_template_through_the_checked_contract() {
    for name in SPECS {
        let spec = load_data(name);
        // The block as a contract's: it checks clean, and lowers to exactly the generated rules.
        let text = format!("format: metricpact/v1\nname: t\nversion: '1'\n{}", routes_block(&spec, name, Unmatched::Other, None));
        let compiled = compile_source(&Source { path: PathBuf::from("c.yaml"), text });
        assert!(compiled.diagnostics.is_empty(), "{name}: {:?}", compiled.diagnostics);
        let config = compiled.config.unwrap();
        assert_eq!(config.routes.rules, spec.rules(), "{name}");
        assert!(coverage(&spec, Path::new("c.yaml"), &config.routes).is_empty(), "{name}");
        let matcher = RouteMatcher::new(&spec.rules()).unwrap();
        let mut count = 0;
        for route in &spec.routes {
            for example in &route.examples {
                assert_eq!(route_text(&matcher, &example.path).as_deref(), Some(example.route.as_str()), "{name}: {example:?}");
                count += 1;
            }
        }
        assert!(count >= spec.routes.len(), "{name}: {count} examples");
    }
}

#[test]
fn the_issues_api_examples_are_these() {
    let spec = load_data("issues-api.yaml");
    let examples: Vec<(String, String, String)> = spec
        .routes
        .iter()
        .flat_map(|r| r.examples.iter().map(|e| (e.methods.join(","), e.path.clone(), e.route.clone())))
        .collect();
    let v = |version: &str, methods: &str, path: &str, route: &str| {
        (methods.to_string(), format!("/api/{version}{path}"), format!("/api/{version}{route}"))
    };
    let mut expected = vec![("GET".to_string(), "/health".to_string(), "/health".to_string())];
    let api = [
        ("GET", "/users/me", "/users/me"),
        ("GET,PATCH,DELETE", "/users/42", "/users/{id}"),
        ("GET", "/users/42/repos", "/users/{id}/repos"),
        ("GET", "/orgs/acme", "/orgs/{org}"),
        ("GET,POST", "/orgs/acme/repos", "/orgs/{org}/repos"),
        ("GET", "/orgs/acme/repos/www", "/orgs/{org}/repos/{repo}"),
        ("GET,POST", "/orgs/acme/repos/www/issues", "/orgs/{org}/repos/{repo}/issues"),
        ("GET,PATCH", "/orgs/acme/repos/www/issues/42", "/orgs/{org}/repos/{repo}/issues/{number}"),
        ("GET", "/orgs/acme/repos/www/issues/42/comments", "/orgs/{org}/repos/{repo}/issues/{number}/comments"),
        ("GET", "/orgs/acme/repos/www/releases/latest", "/orgs/{org}/repos/{repo}/releases/latest"),
        ("GET", "/orgs/acme/repos/www/releases/releaseId-1", "/orgs/{org}/repos/{repo}/releases/{releaseId}"),
        ("GET", "/issues/open", "/issues/{state}"),
        ("GET", "/attachments/3fa85f64-5717-4562-b3fc-2c963f66afa6", "/attachments/{attachmentId}"),
        ("GET", "/reports/summary.csv", "/reports/summary.{format}"),
        ("GET", "/reports/q3-2024.csv", "/reports/{reportId}.{format}"),
        ("GET", "/reports/q3-2024", "/reports/{reportId}"),
    ];
    for (methods, path, route) in api {
        // The server variable's default first, then each of its values (v1 again is the same).
        expected.push(v("v1", methods, path, route));
        expected.push(v("v2", methods, path, route));
    }
    expected.push(("POST".into(), "/v1/uploads".into(), "/v1/uploads".into()));
    assert_eq!(examples, expected);
    // Path keys keep their positions for diagnostics.
    let me = spec.routes.iter().find(|r| r.path == "/users/me").unwrap();
    assert_eq!((me.line, me.column), (51, 3));
    assert!(spec.warnings.is_empty(), "{:?}", spec.warnings);
}

#[test]
fn a_literal_segment_precedes_a_parameter_wherever_two_templates_first_differ() {
    let s = spec(&format!(
        "{HEAD}paths:\n  /a/{{x}}: {{}}\n  /b/c: {{}}\n  /a/d: {{}}\n  /users/{{id}}: {{}}\n  /users/me: {{}}\n  /users/{{id}}/x: {{}}\n  /users/me/x: {{}}\n"
    ));
    let templates: Vec<String> = rules(&s).into_iter().map(|r| r.1).collect();
    // Not a comparison sort on pairs (that is not transitive here): a walk over the segments.
    assert_eq!(templates, ["/a/d", "/a/{x}", "/b/c", "/users/me", "/users/me/x", "/users/{id}", "/users/{id}/x"]);
    let matcher = RouteMatcher::new(&s.rules()).unwrap();
    assert_eq!(route_text(&matcher, "/users/me").as_deref(), Some("/users/me"));
    assert_eq!(route_text(&matcher, "/users/mean").as_deref(), Some("/users/{id}"));
}

#[test]
fn mixed_segments_sit_between_literals_and_parameters_most_literal_first() {
    let s = spec(&format!("{HEAD}paths:\n  /f/{{name}}: {{}}\n  /f/{{n}}.{{ext}}: {{}}\n  /f/{{n}}.tar.gz: {{}}\n  /f/index.html: {{}}\n"));
    let templates: Vec<String> = rules(&s).into_iter().map(|r| r.1).collect();
    assert_eq!(templates, ["/f/index.html", "/f/{n}.tar.gz", "/f/{n}.{ext}", "/f/{name}"]);
}

#[test]
fn parameters_are_tightened_only_by_schemas_every_operation_agrees_on() {
    let s = spec(&format!(
        r#"{HEAD}paths:
  /a/{{id}}:
    get:
      parameters: [{{name: id, in: path, required: true, schema: {{type: integer}}}}]
    delete:
      parameters: [{{name: id, in: path, required: true, schema: {{type: string}}}}]
  /b/{{id}}:
    parameters: [{{name: id, in: path, required: true, schema: {{type: integer, minimum: 0}}}}]
    get: {{}}
    put:
      parameters: [{{name: id, in: path, required: true, schema: {{type: integer, minimum: 0}}, example: 7}}]
  /c/{{flag}}:
    parameters: [{{name: flag, in: path, required: true, schema: {{type: boolean}}}}]
  /d/{{m}}:
    parameters: [{{name: m, in: path, required: true, style: matrix, schema: {{type: integer}}}}]
  /e/{{kind}}:
    parameters: [{{name: kind, in: path, required: true, schema: {{type: string, enum: [a.b, c+d, a.b]}}}}]
  /f/{{one}}:
    parameters: [{{name: one, in: path, required: true, schema: {{const: only}}}}]
  /g/{{n}}:
    parameters: [{{name: n, in: path, required: true, schema: {{allOf: [{{$ref: '#/components/schemas/N'}}]}}}}]
components:
  schemas:
    N: {{type: [integer, 'null'], minimum: 5}}
"#
    ));
    assert_eq!(
        rules(&s).into_iter().map(|r| r.0).collect::<Vec<_>>(),
        [
            "/a/[^/]+",
            "/b/[0-9]+",
            "/c/(?:true|false)",
            "/d/[^/]+",
            r"/e/(?:a\.b|c\+d)",
            "/f/only",
            "/g/[0-9]+",
        ]
    );
    // Each operation's own example: GET's is generated, PUT's declared.
    let b = &s.routes[1].examples;
    assert_eq!(b.iter().map(|e| (e.methods.join(","), e.path.as_str())).collect::<Vec<_>>(), [("GET".into(), "/b/42"), ("PUT".into(), "/b/7")]);
    // No operation: no example request, but still a rule.
    assert!(s.routes[2].examples.is_empty());
}

#[test]
fn generated_examples_fit_the_schema_and_are_percent_encoded() {
    let s = spec(&format!(
        r#"{HEAD}paths:
  /n/{{n}}:
    get:
      parameters: [{{name: n, in: path, required: true, schema: {{type: integer, minimum: 100}}}}]
  /m/{{n}}:
    get:
      parameters: [{{name: n, in: path, required: true, schema: {{type: integer, maximum: 3}}}}]
  /s/{{name}}:
    get:
      parameters: [{{name: name, in: path, required: true, schema: {{type: string}}, example: "a b/c?"}}]
  /u/{{undeclared}}:
    get: {{}}
  /x/{{v}}:
    get:
      parameters:
        - name: v
          in: path
          required: true
          schema: {{type: string}}
          examples: {{first: {{$ref: '#/components/examples/V'}}}}
components:
  examples:
    V: {{value: from-ref}}
"#
    ));
    let paths: Vec<&str> = s.routes.iter().flat_map(|r| r.examples.iter().map(|e| e.path.as_str())).collect();
    assert_eq!(paths, ["/n/100", "/m/3", "/s/a%20b%2Fc%3F", "/u/undeclared-1", "/x/from-ref"]);
}

#[test]
fn a_dollar_in_a_path_is_a_literal_dollar() {
    let s = spec(&format!("{HEAD}paths:\n  /price/$:\n    get: {{}}\n  /cost/{{n}}$:\n    get: {{}}\n"));
    assert_eq!(
        rules(&s),
        [("exact /price/$".to_string(), "/price/$".to_string()), (r"/cost/[^/]+\$".to_string(), "/cost/{n}$$".to_string())]
    );
    let matcher = RouteMatcher::new(&s.rules()).unwrap();
    assert_eq!(route_text(&matcher, "/price/$").as_deref(), Some("/price/$"));
    assert_eq!(route_text(&matcher, "/cost/5$").as_deref(), Some("/cost/{n}$"));
}

#[test]
fn server_urls_give_their_path_part() {
    let base = |url: &str, vars: &str| {
        let vars: Value = serde_json::from_str(vars).unwrap();
        let parts = server_base(url, Some(&vars)).unwrap();
        Template { parts, patterns: &HashMap::new() }.contract_template()
    };
    assert_eq!(base("https://api.example.com:8443/v1/", "{}"), "/v1");
    assert_eq!(base("https://api.example.com", "{}"), "");
    assert_eq!(base("//cdn.example.com/assets?x=1", "{}"), "/assets");
    assert_eq!(base("/", "{}"), "");
    assert_eq!(base("v1", "{}"), "/v1");
    assert_eq!(base("./v1", "{}"), "/v1");
    assert_eq!(base(".", "{}"), "");
    assert_eq!(base("{server}/v1", r#"{"server": {"default": "https://api.example.com/base"}}"#), "/base/v1");
    assert_eq!(base("https://{tenant}.example.com/{basePath}", r#"{"tenant": {"default": "a", "enum": ["a", "b"]}, "basePath": {"default": "v2"}}"#), "/v2");
    assert_eq!(base("/{v}", r#"{"v": {"default": "v3", "enum": ["v3"]}}"#), "/v3");
    assert_eq!(base("/{api-version}/x/{api_version}", r#"{"api-version": {"default": "1", "enum": ["1", "2"]}, "api_version": {"default": "a", "enum": ["a", "b"]}}"#), "/${api_version}/x/${api_version_2}");
    assert_eq!(base("/{2x}", r#"{"2x": {"default": "1", "enum": ["1", "2"]}}"#), "/${_2x}");
    let err = |url: &str, vars: &str| server_base(url, Some(&serde_json::from_str(vars).unwrap())).unwrap_err();
    assert_eq!(err("/{v}", "{}"), "variable `{v}` is not in `variables`");
    assert_eq!(err("/{v}", r#"{"v": {"enum": ["a"]}}"#), "variable `v` has no `default`");
    assert_eq!(err("/{v", "{}"), "has a `{` without its `}`");
}

#[test]
fn each_distinct_base_path_is_a_rule_of_its_own_and_path_servers_override() {
    let s = spec(&format!(
        r#"{HEAD}servers:
  - url: https://a.example.com/v1
  - url: https://b.example.com/v1/
  - url: https://c.example.com/beta
paths:
  /things/{{id}}:
    get: {{}}
  /status:
    servers: [{{url: 'http://localhost:8080'}}]
    get: {{}}
  /upload:
    get: {{}}
    post:
      servers: [{{url: /files}}]
"#
    ));
    assert_eq!(
        rules(&s).into_iter().map(|r| r.1).collect::<Vec<_>>(),
        ["/v1/things/{id}", "/v1/upload", "/beta/things/{id}", "/beta/upload", "/status", "/files/upload"]
    );
    let upload: Vec<_> = s.routes.iter().filter(|r| r.path == "/upload").map(|r| (r.examples[0].methods.clone(), r.examples[0].path.clone())).collect();
    assert_eq!(upload, [(vec!["GET".to_string()], "/v1/upload".to_string()), (vec!["GET".to_string()], "/beta/upload".to_string()), (vec!["POST".to_string()], "/files/upload".to_string())]);
}

#[test]
fn swagger_base_path_and_no_servers() {
    let s = spec("swagger: '2.0'\ninfo: {title: t, version: '1'}\nbasePath: /\npaths:\n  /a: {get: {}}\n");
    assert_eq!(rules(&s), [("exact /a".to_string(), "/a".to_string())]);
    let s = spec(&format!("{HEAD}paths:\n  /: {{get: {{}}}}\n"));
    assert_eq!(rules(&s), [("exact /".to_string(), "/".to_string())]);
    let s = spec("swagger: '2.0'\ninfo: {title: t, version: '1'}\nbasePath: /api/\npaths:\n  /: {get: {}}\n");
    assert_eq!(s.dialect, "Swagger 2.0");
    assert_eq!(rules(&s), [("exact /api/".to_string(), "/api/".to_string())]);
}

#[test]
fn unusable_documents_are_reported_where_they_are() {
    assert_eq!(problems("title: not an API\n"), ["api.yaml: error: not an OpenAPI or Swagger document: it has neither `openapi: 3.x` nor `swagger: \"2.0\"`"]);
    assert_eq!(problems("- a\n- b\n"), ["api.yaml: error: not an OpenAPI or Swagger document: expected a mapping with `openapi: 3.x` or `swagger: \"2.0\"`"]);
    assert_eq!(problems("info: {}\nopenapi: 2.0\npaths: {}\n"), ["api.yaml:2:10: error: unsupported `openapi: 2.0`: this reads OpenAPI 3.x and Swagger 2.0"]);
    assert_eq!(problems("swagger: '1.2'\npaths: {}\n"), ["api.yaml:1:10: error: unsupported `swagger: 1.2`: this reads Swagger 2.0 and OpenAPI 3.x"]);
    assert_eq!(problems(HEAD), ["api.yaml: error: has no `paths`: there are no routes to generate"]);
    assert_eq!(problems(&format!("{HEAD}paths: [/a]\n")), ["api.yaml:3:8: error: `paths` must be a mapping of path templates to path items"]);
    assert_eq!(problems(&format!("{HEAD}paths:\n  x-only: extension\n")), ["api.yaml:4:3: error: `paths` lists no path: there are no routes to generate"]);
    assert_eq!(
        problems(&format!("{HEAD}paths:\n  /ok: {{}}\n  /users/{{id:\n    get: {{}}\n  /a}}/b: {{}}\n  /c/{{}}: {{}}\n  /d/{{{{x}}}}: {{}}\n  e/f: {{}}\n  /g: [1]\n")),
        [
            "api.yaml:5:3: error: path `/users/{id` has a `{` without its `}`",
            "api.yaml:7:3: error: path `/a}/b` has a `}` without its `{`",
            "api.yaml:8:3: error: path `/c/{}` has an empty `{}`",
            "api.yaml:9:3: error: path `/d/{{x}}` has a `{` inside `{…}`",
            "api.yaml:10:3: error: path `e/f` must start with `/`",
            "api.yaml:11:3: error: path `/g` must map to a Path Item (a mapping of operations)",
        ]
    );
    assert_eq!(problems(&format!("{HEAD}servers:\n  - url: /{{v}}\npaths:\n  /a: {{}}\n")), ["api.yaml:4:3: error: server `/{v}`: variable `{v}` is not in `variables`"]);
    assert_eq!(problems("openapi: 3.0.0\npaths:\n  /a: [\n"), ["api.yaml:3:7: error: not valid YAML: unclosed bracket '['"]);
    let json = from_text(Path::new("api.json"), "{\"openapi\": \"3.1.0\",\n \"paths\": {\"/a\": {}}\n").unwrap_err();
    assert_eq!(json[0].to_string(), "api.json:3:1: error: not valid JSON: EOF while parsing an object");
}

#[test]
fn paths_that_differ_only_in_parameter_names_keep_the_first() {
    let s = spec(&format!("{HEAD}paths:\n  /items/{{id}}:\n    get: {{}}\n  /items/{{slug}}:\n    get: {{}}\n"));
    assert_eq!(rules(&s), [("/items/[^/]+".to_string(), "/items/{id}".to_string())]);
    assert_eq!(
        s.warnings.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        ["api.yaml:6:3: warning: `/items/{slug}` matches the same requests as `/items/{id}` (line 4): OpenAPI forbids paths that differ only in parameter names; it gets no rule of its own, its requests get `/items/{id}`"]
    );
}

#[test]
fn refs_to_other_documents_are_warned_about_and_not_followed() {
    let s = spec(&format!(
        "{HEAD}paths:\n  /a/{{id}}:\n    parameters: [{{$ref: 'common.yaml#/components/parameters/Id'}}]\n    get: {{}}\n  /b:\n    $ref: 'paths/b.yaml'\n  /c/{{id}}:\n    parameters: [{{$ref: '#/components/parameters/Missing'}}]\n"
    ));
    assert_eq!(rules(&s).into_iter().map(|r| r.1).collect::<Vec<_>>(), ["/a/{id}", "/b", "/c/{id}"]);
    assert_eq!(
        s.warnings.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        [
            "api.yaml:4:3: warning: a parameter's `$ref: common.yaml#/components/parameters/Id` points into another document, which is not read: it matches any segment",
            "api.yaml:7:3: warning: path `/b`: `$ref: paths/b.yaml` points into another document, which is not read: its operations are unknown; its parameters match any segment",
            "api.yaml:9:3: warning: a parameter's `$ref: #/components/parameters/Missing` points at nothing in this document: it matches any segment",
        ]
    );
}

#[test]
fn a_json_document_only_serde_json_reads_has_no_positions() {
    // A key longer than YAML's 1024-character limit on implicit keys: YAML refuses the line.
    let long = "x".repeat(1100);
    let text = format!("{{\"openapi\": \"3.0.0\", \"info\": {{\"title\": \"t\", \"{long}\": 1}}, \"paths\": {{\"/a/{{b\": {{}}}}}}");
    let diags = from_text(Path::new("api.json"), &text).unwrap_err();
    assert_eq!(diags.iter().map(|d| d.to_string()).collect::<Vec<_>>(), ["api.json: error: path `/a/{b` has a `{` without its `}`"]);
}

#[test]
fn deep_documents_parse_and_deeper_ones_are_refused_without_a_crash() {
    // Deeply nested schemas elsewhere in the document are no problem for the routes (the
    // parser has a stack of its own; the test thread's 2 MB would not do in a debug build).
    let nested = |levels: usize| {
        let mut schema = String::from("{type: string}");
        for _ in 0..levels {
            schema = format!("{{type: object, properties: {{p: {schema}}}}}");
        }
        format!("{HEAD}paths:\n  /a: {{get: {{}}}}\ncomponents:\n  schemas:\n    Deep: {schema}\n")
    };
    assert_eq!(spec(&nested(120)).routes.len(), 1);
    let refused = problems(&nested(200));
    assert!(refused[0].starts_with("api.yaml:7:") && refused[0].contains("not valid YAML: budget breached: Depth"), "{refused:?}");
}

const CONTRACT: &str = "# yaml-language-server: $schema=metricpact.schema.json
format: metricpact/v1   # keep me
name: shop
version: 1.0.0

routes:
  # hand-written
  rules:
    - exact: /old
# a top-level comment in the middle of the block
    - prefix: /static/
      template: /static/*
  unmatched: raw   # kept by whoever writes the block
  # the block's last comment

# Budgets (this comment introduces the next section and stays)
cardinality:
  max_series: 500
";

#[test]
fn the_routes_block_is_replaced_and_every_other_byte_kept() {
    let out = replace_routes_block(CONTRACT, "routes:\n  rules: []\n").unwrap();
    assert_eq!(
        out,
        "# yaml-language-server: $schema=metricpact.schema.json
format: metricpact/v1   # keep me
name: shop
version: 1.0.0

routes:
  rules: []

# Budgets (this comment introduces the next section and stays)
cardinality:
  max_series: 500
"
    );
    // Last in the file, without a final newline.
    let out = replace_routes_block("name: a\nroutes:\n  rules: []", "routes:\n  rules: [x]\n").unwrap();
    assert_eq!(out, "name: a\nroutes:\n  rules: [x]\n");
    // A flow mapping on the key's line, and a quoted key.
    assert_eq!(replace_routes_block("a: 1\n\"routes\" : {rules: []}\nb: 2\n", "routes: {}\n").unwrap(), "a: 1\nroutes: {}\nb: 2\n");
    // `routes_x:` and an indented `routes:` are other keys.
    let other = "routes_x: 1\nmetrics:\n  routes: 2\n";
    assert_eq!(replace_routes_block(other, "routes: {}\n").unwrap(), format!("{other}\nroutes: {{}}\n"));
}

#[test]
fn a_contract_without_routes_gets_the_block_at_its_end() {
    assert_eq!(replace_routes_block("name: a\n", "routes: {}\n").unwrap(), "name: a\n\nroutes: {}\n");
    assert_eq!(replace_routes_block("name: a", "routes: {}\n").unwrap(), "name: a\n\nroutes: {}\n");
    assert_eq!(replace_routes_block("name: a\n\n", "routes: {}\n").unwrap(), "name: a\n\nroutes: {}\n");
    assert_eq!(replace_routes_block("", "routes: {}\n").unwrap(), "routes: {}\n");
}

#[test]
fn crlf_files_stay_crlf() {
    let out = replace_routes_block("a: 1\r\nroutes:\r\n  rules: []\r\nb: 2\r\n", "routes:\n  unmatched: other\n").unwrap();
    assert_eq!(out, "a: 1\r\nroutes:\r\n  unmatched: other\r\nb: 2\r\n");
}

#[test]
fn two_routes_keys_are_refused() {
    assert_eq!(replace_routes_block("routes: {}\nroutes: {}\n", "routes: {}\n").unwrap_err(), "has two top-level `routes:` keys (lines 1 and 2)");
}

#[test]
fn coverage_names_each_request_the_contract_routes_elsewhere() {
    let s = spec(&format!(
        "{HEAD}servers: [{{url: /api}}]\npaths:\n  /users/{{id}}:\n    get: {{}}\n    delete: {{}}\n  /users/me:\n    get: {{}}\n  /orders:\n    get: {{}}\n  /empty: {{}}\n"
    ));
    let table = |unmatched| RouteTable {
        rules: vec![
            RouteRule { matcher: RouteMatch::Regex("/api/users/[^/]+".into()), template: "/api/users/{userId}".into() },
            RouteRule { matcher: RouteMatch::Exact("/api/users/me".into()), template: "/api/users/me".into() },
        ],
        unmatched,
        raw_max_length: 64,
    };
    let found: Vec<String> = coverage(&s, Path::new("c.yaml"), &table(Unmatched::Other)).iter().map(|d| d.to_string()).collect();
    assert_eq!(
        found,
        [
            "api.yaml:5:3: error: GET, DELETE /users/{id}: c.yaml routes `/api/users/id-1` to `/api/users/{userId}`, not `/api/users/{id}`",
            // The contract's regex comes first and takes /users/me before its exact rule.
            "api.yaml:8:3: error: GET /users/me: c.yaml routes `/api/users/me` to `/api/users/{userId}`, not `/api/users/me`",
            "api.yaml:10:3: error: GET /orders: c.yaml routes `/api/orders` to `_OTHER` (no rule matches), not `/api/orders`",
        ]
    );
    // One finding per path, however many of its example requests go astray.
    let versioned = spec(&format!(
        "{HEAD}servers: [{{url: '/{{v}}', variables: {{v: {{default: v1, enum: [v1, v2, v3]}}}}}}]\npaths:\n  /a:\n    get: {{}}\n"
    ));
    let v1_only = RouteTable { rules: vec![RouteRule { matcher: RouteMatch::Exact("/v1/a".into()), template: "/v1/a".into() }], unmatched: Unmatched::Other, raw_max_length: 64 };
    let found: Vec<String> = coverage(&versioned, Path::new("c.yaml"), &v1_only).iter().map(|d| d.message.clone()).collect();
    assert_eq!(found, ["GET /a: c.yaml routes `/v2/a` to `_OTHER` (no rule matches), not `/v2/a` (and 1 more example request of this path)"]);
    let raw = coverage(&s, Path::new("c.yaml"), &table(Unmatched::Raw));
    assert_eq!(raw[2].message, "GET /orders: c.yaml routes `/api/orders` to its raw path (no rule matches; `unmatched: raw`), not `/api/orders`");
}
