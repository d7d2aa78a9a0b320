//! Route templating: turns a request path into a low-cardinality `http_route` value using the
//! contract's ordered rules, compiled once into literal tables plus one `RegexSet`.

use std::borrow::Cow;

use regex::{Regex, RegexSet};

use crate::config::{RouteMatch, RouteRule};

/// A path's route, before label interning.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteOutcome<'a> {
    /// Rule `index` matched and its template needs no captures: the value is fixed per rule.
    Fixed(usize),
    /// A rule matched and its template spliced in captures from the path (untrusted text).
    Expanded(String),
    /// No rule matched; the path without its query, for `unmatched: raw`.
    Unmatched(&'a str),
}

/// Why a route rule was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub rule: usize,
    pub message: String,
}

#[derive(Clone)]
struct Rule {
    matcher: Matcher,
    template: String,
    /// Template contains `$` references and must be expanded per request.
    expands: bool,
}

#[derive(Clone)]
enum Matcher {
    Exact(String),
    Prefix(String),
    /// Index into `regexes` (and into the `RegexSet`).
    Regex(usize),
}

/// The compiled route table. Cloning shares the compiled regexes (they are reference-counted).
#[derive(Clone)]
pub struct RouteMatcher {
    rules: Vec<Rule>,
    set: RegexSet,
    regexes: Vec<Regex>,
    /// Rule index of each regex.
    regex_rule: Vec<usize>,
    any_literal: bool,
    /// Reused per-pattern match flags, so routing a path allocates nothing.
    scratch: std::cell::RefCell<Vec<bool>>,
}

/// Anchors a contract regex so it must match the whole path.
pub fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// Checks a template's `$` references against a regex's capture groups.
pub fn check_template(template: &str, regex: Option<&Regex>) -> Result<bool, String> {
    let refs = template_refs(template)?;
    if refs.is_empty() {
        return Ok(false);
    }
    let Some(regex) = regex else {
        return Err("only `regex` rules can use `$` captures in their template; write `$$` for a literal `$`".into());
    };
    for r in &refs {
        let known = match r.parse::<usize>() {
            Ok(n) => n < regex.captures_len(),
            Err(_) => regex.capture_names().flatten().any(|n| n == r),
        };
        if !known {
            return Err(format!("template refers to capture `{r}`, which the regex does not define"));
        }
    }
    Ok(true)
}

/// The capture names a template uses (`$name`, `${name}`, `$1`); `$$` is a literal dollar.
fn template_refs(template: &str) -> Result<Vec<String>, String> {
    let mut refs = Vec::new();
    let bytes = template.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'{') {
            let Some(end) = template[i + 2..].find('}') else {
                return Err("unclosed `${` in template".into());
            };
            refs.push(template[i + 2..i + 2 + end].to_string());
            i += 3 + end;
            continue;
        }
        let name: String = template[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            return Err("`$` must be followed by a capture name or number; write `$$` for a literal `$`".into());
        }
        i += 1 + name.len();
        refs.push(name);
    }
    Ok(refs)
}

impl RouteMatcher {
    pub fn new(rules: &[RouteRule]) -> Result<RouteMatcher, RouteError> {
        let mut compiled = Vec::with_capacity(rules.len());
        let mut patterns = Vec::new();
        let mut regexes = Vec::new();
        let mut regex_rule = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let err = |message: String| RouteError { rule: index, message };
            let (matcher, regex) = match &rule.matcher {
                RouteMatch::Exact(path) => (Matcher::Exact(path.clone()), None),
                RouteMatch::Prefix(prefix) => (Matcher::Prefix(prefix.clone()), None),
                RouteMatch::Regex(pattern) => {
                    let full = anchored(pattern);
                    let regex = Regex::new(&full).map_err(|e| err(e.to_string()))?;
                    patterns.push(full);
                    regexes.push(regex);
                    regex_rule.push(index);
                    (Matcher::Regex(regexes.len() - 1), regexes.last())
                }
            };
            let expands = check_template(&rule.template, regex).map_err(err)?;
            // A template without captures is the route itself, once `$$` is read as a literal `$`.
            let template = if expands { rule.template.clone() } else { rule.template.replace("$$", "$") };
            compiled.push(Rule { matcher, template, expands });
        }
        let set = RegexSet::new(&patterns).map_err(|e| RouteError { rule: 0, message: e.to_string() })?;
        let any_literal = compiled.iter().any(|r| !matches!(r.matcher, Matcher::Regex(_)));
        let scratch = std::cell::RefCell::new(vec![false; regexes.len()]);
        Ok(RouteMatcher { rules: compiled, set, regexes, regex_rule, any_literal, scratch })
    }

    /// The template of rule `index` (for rules that do not expand captures).
    pub fn template(&self, index: usize) -> &str {
        &self.rules[index].template
    }

    /// Indices of rules whose value is fixed by the contract.
    pub fn fixed_rules(&self) -> impl Iterator<Item = usize> + '_ {
        self.rules.iter().enumerate().filter(|(_, r)| !r.expands).map(|(i, _)| i)
    }

    /// Routes `path` (query and fragment are ignored). First matching rule in contract order wins.
    pub fn route<'a>(&self, path: &'a str) -> RouteOutcome<'a> {
        // A byte search: `?` and `#` are ASCII, so the cut is on a char boundary.
        let path = &path[..path.bytes().position(|b| b == b'?' || b == b'#').unwrap_or(path.len())];
        let first_regex = if self.regexes.is_empty() {
            None
        } else {
            let mut flags = self.scratch.borrow_mut();
            flags.iter_mut().for_each(|f| *f = false);
            self.set.matches_read_at(&mut flags, path, 0);
            flags.iter().position(|&hit| hit).map(|i| self.regex_rule[i])
        };
        // Literal rules before the first matching regex win, keeping contract order.
        let limit = first_regex.unwrap_or(self.rules.len());
        if self.any_literal {
            for (index, rule) in self.rules[..limit].iter().enumerate() {
                let hit = match &rule.matcher {
                    Matcher::Exact(p) => p == path,
                    Matcher::Prefix(p) => path.starts_with(p.as_str()),
                    Matcher::Regex(_) => false,
                };
                if hit {
                    return RouteOutcome::Fixed(index);
                }
            }
        }
        match first_regex {
            None => RouteOutcome::Unmatched(path),
            Some(index) => {
                let rule = &self.rules[index];
                if !rule.expands {
                    return RouteOutcome::Fixed(index);
                }
                let Matcher::Regex(r) = rule.matcher else { return RouteOutcome::Fixed(index) };
                match self.regexes[r].captures(path) {
                    Some(caps) => {
                        let mut out = String::new();
                        caps.expand(&rule.template, &mut out);
                        RouteOutcome::Expanded(out)
                    }
                    None => RouteOutcome::Fixed(index),
                }
            }
        }
    }
}

/// Convenience for callers that want the route text itself.
pub fn route_text<'a>(matcher: &'a RouteMatcher, path: &'a str) -> Option<Cow<'a, str>> {
    match matcher.route(path) {
        RouteOutcome::Fixed(i) => Some(Cow::Borrowed(matcher.template(i))),
        RouteOutcome::Expanded(s) => Some(Cow::Owned(s)),
        RouteOutcome::Unmatched(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn rule(matcher: RouteMatch, template: &str) -> RouteRule {
        RouteRule { matcher, template: template.into() }
    }

    fn table() -> RouteMatcher {
        RouteMatcher::new(&[
            rule(RouteMatch::Exact("/healthz".into()), "/healthz"),
            rule(RouteMatch::Regex(r"/users/(?P<id>[0-9]+)".into()), "/users/{id}"),
            rule(RouteMatch::Regex(r"/api/(?P<v>v[12])/orders/[^/]+".into()), "/api/${v}/orders/{order_id}"),
            rule(RouteMatch::Prefix("/static/".into()), "/static/*"),
            rule(RouteMatch::Regex(r"/static/special".into()), "/never"),
        ])
        .unwrap()
    }

    #[test]
    fn exact_prefix_and_regex_rules_route() {
        let t = table();
        assert_eq!(route_text(&t, "/healthz").as_deref(), Some("/healthz"));
        assert_eq!(route_text(&t, "/users/42?x=1").as_deref(), Some("/users/{id}"));
        assert_eq!(route_text(&t, "/static/app.js").as_deref(), Some("/static/*"));
        assert_eq!(route_text(&t, "/api/v2/orders/abc").as_deref(), Some("/api/v2/orders/{order_id}"));
    }

    #[test]
    fn regexes_match_the_whole_path_only() {
        let t = table();
        assert_eq!(t.route("/users/42/extra"), RouteOutcome::Unmatched("/users/42/extra"));
        assert_eq!(t.route("/x/users/42"), RouteOutcome::Unmatched("/x/users/42"));
    }

    #[test]
    fn earlier_rules_win_in_contract_order() {
        let t = table();
        // The prefix rule (index 3) precedes the regex rule (index 4) for the same path.
        assert_eq!(t.route("/static/special"), RouteOutcome::Fixed(3));
    }

    #[test]
    fn unmatched_strips_query_and_fragment() {
        assert_eq!(table().route("/nope?a=b#c"), RouteOutcome::Unmatched("/nope"));
    }

    #[test]
    fn template_references_are_checked() {
        let bad = RouteMatcher::new(&[rule(RouteMatch::Regex("/a/(x)".into()), "/a/$2")]);
        assert!(bad.err().unwrap().message.contains("`2`"));
        let literal = RouteMatcher::new(&[rule(RouteMatch::Prefix("/a".into()), "/a/$x")]);
        assert!(literal.is_err());
        assert!(RouteMatcher::new(&[rule(RouteMatch::Prefix("/a".into()), "/a/$$")]).is_ok());
    }

    #[test]
    fn a_double_dollar_is_a_literal_dollar_in_every_template() {
        // Found by fuzzing (tests/fuzz, stat_names): templates without captures kept `$$`.
        let t = RouteMatcher::new(&[
            rule(RouteMatch::Prefix("/price/".into()), "/price/$$"),
            rule(RouteMatch::Regex("/cost/[0-9]+".into()), "/cost/$${n}"),
            rule(RouteMatch::Regex("/money/([0-9]+)".into()), "/money/$$$1"),
        ])
        .unwrap();
        assert_eq!(route_text(&t, "/price/9").as_deref(), Some("/price/$"));
        assert_eq!(route_text(&t, "/cost/9").as_deref(), Some("/cost/${n}"));
        assert_eq!(route_text(&t, "/money/9").as_deref(), Some("/money/$9"));
    }

    #[test]
    fn bad_regex_names_its_rule() {
        let err = RouteMatcher::new(&[
            rule(RouteMatch::Exact("/".into()), "/"),
            rule(RouteMatch::Regex("/(unclosed".into()), "/x"),
        ])
        .err()
        .unwrap();
        assert_eq!(err.rule, 1);
    }
}
