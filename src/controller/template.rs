//! Token Secret templates (`spec.tokenSecret.template`): checking the metadata and rendering the
//! data keys with a sandboxed Jinja engine. Pure: no I/O.
//!
//! The engine has no loader (no `include`, `import` or `extends` of other files), no access to the
//! environment or the file system, strict undefined values (a misspelt name is an error, not an
//! empty string), no auto-escaping, and an instruction budget (a loop cannot run away).

use std::collections::BTreeMap;

use base64::Engine as _;
use minijinja::value::Value;
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use secrecy::{ExposeSecret, SecretString};

use super::error::Error;
use crate::api::{LABEL_INSTANCE, LABEL_MANAGED_BY, TokenSecretTemplate};

/// The value that holds the full `Authorization` header (platform credentials included).
pub const AUTHORIZATION: &str = "authorization";

/// The values a template may use, in the order the documentation lists them.
pub const VALUES: [&str; 7] =
    ["token", "instanceId", "baseUrl", "connector", "name", "namespace", AUTHORIZATION];

/// Instructions one key's template may run (far above any real template; a runaway loop stops).
const FUEL: u64 = 50_000;

/// Largest rendered Secret content (bytes): the API server's limit for a Secret is 1 MiB.
const MAX_RENDERED_BYTES: usize = 512 * 1024;

/// Label and annotation key prefixes a template may not set: the operator's own, and those
/// GitOps tools use to track what they manage (a Secret carrying them would be taken for one of
/// theirs, and pruned or reported out of sync).
const RESERVED_PREFIXES: [&str; 5] = [
    "openconnectors.io/",
    "argocd.argoproj.io/",
    "kustomize.toolkit.fluxcd.io/",
    "helm.toolkit.fluxcd.io/",
    "meta.helm.sh/",
];

/// Key prefixes Kubernetes reserves for itself (`kubernetes.io/`, `k8s.io/` and their
/// subdomains): an annotation such as `kubernetes.io/service-account.name` makes the API server
/// act on the Secret. Labels may still use `app.kubernetes.io/` (the recommended labels).
const KUBERNETES_PREFIXES: [&str; 2] = ["kubernetes.io/", "k8s.io/"];

/// Label and annotation keys a template may not set (exact keys).
const RESERVED_KEYS: [&str; 3] = [LABEL_MANAGED_BY, LABEL_INSTANCE, "app.kubernetes.io/instance"];

/// What the templates are rendered from.
#[derive(Debug)]
pub struct Values<'a> {
    /// The instance token.
    pub token: &'a SecretString,
    /// The remote instance id.
    pub instance_id: i64,
    /// The platform base URL.
    pub base_url: &'a str,
    /// The connector key.
    pub connector: &'a str,
    /// The ConnectorInstance's name.
    pub name: &'a str,
    /// The ConnectorInstance's namespace.
    pub namespace: &'a str,
    /// The `Authorization` header value, where the platform allows it.
    pub authorization: Option<&'a SecretString>,
}

impl Values<'_> {
    /// The secret values, longest first: what an error text must never contain.
    fn secrets(&self) -> Vec<&str> {
        let mut secrets: Vec<&str> = std::iter::once(self.token.expose_secret())
            .chain(self.authorization.map(|a| a.expose_secret()))
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets
    }
}

/// Whether any data template of `template` uses the `authorization` value. A template that does
/// not parse is reported by [`render`]; here it counts as not using it.
pub fn uses_authorization(template: &TokenSecretTemplate) -> bool {
    !keys_using_authorization(template).is_empty()
}

/// The data keys of `template` whose template uses the `authorization` value (sorted). A
/// template that does not parse counts as not using it.
pub fn keys_using_authorization(template: &TokenSecretTemplate) -> Vec<String> {
    let env = environment();
    template
        .data
        .iter()
        .filter(|(_, source)| {
            env.template_from_str(source).is_ok_and(|t| t.undeclared_variables(true).contains(AUTHORIZATION))
        })
        .map(|(key, _)| key.clone())
        .collect()
}

/// Checks the labels and annotations a template adds: valid keys and values, none reserved.
pub fn check_metadata(template: &TokenSecretTemplate) -> Result<(), Error> {
    let Some(metadata) = &template.metadata else { return Ok(()) };
    let invalid = |message: String| Err(Error::invalid("InvalidTokenSecretTemplate", message));
    for (field, map) in [("labels", &metadata.labels), ("annotations", &metadata.annotations)] {
        for (key, value) in map {
            let shown: String = key.chars().take(80).collect();
            if let Err(why) = check_qualified_name(key) {
                return invalid(format!(
                    "spec.tokenSecret.template.metadata.{field} key `{shown}` is not valid: {why}"
                ));
            }
            let has_prefix = |p: &&str| key.starts_with(p) || key.contains(&format!(".{p}"));
            if (field == "annotations" || !key.starts_with("app.kubernetes.io/"))
                && KUBERNETES_PREFIXES.iter().any(has_prefix)
            {
                return invalid(format!(
                    "spec.tokenSecret.template.metadata.{field} key `{shown}` is reserved by Kubernetes (`kubernetes.io/`, `k8s.io/` and their subdomains); choose another key"
                ));
            }
            if RESERVED_KEYS.contains(&key.as_str()) || RESERVED_PREFIXES.iter().any(has_prefix) {
                return invalid(format!(
                    "spec.tokenSecret.template.metadata.{field} key `{shown}` is reserved (the operator's own keys, `openconnectors.io/...`, and GitOps tracking keys of Argo CD, Flux and Helm); choose another key"
                ));
            }
            if field == "labels"
                && let Err(why) = check_label_value(value)
            {
                return invalid(format!(
                    "spec.tokenSecret.template.metadata.labels[`{shown}`] has an invalid value: {why}"
                ));
            }
        }
    }
    let annotation_bytes: usize = metadata.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if annotation_bytes > 128 * 1024 {
        return invalid(
            "spec.tokenSecret.template.metadata.annotations are larger than 128 KiB in all".into(),
        );
    }
    Ok(())
}

/// Checks the token Secret's type against what a token Secret may be, given its data keys:
/// `Opaque`; `kubernetes.io/basic-auth` with a `username` or `password` key; `kubernetes.io/tls`
/// with `tls.crt` and `tls.key`; or a type of the user's own domain (`example.com/token`). Every
/// other type is refused: Kubernetes acts on some of them (a `kubernetes.io/service-account-token`
/// Secret gets a token minted for a ServiceAccount), and the operator writes with its own rights.
pub fn check_type<'a>(type_: &str, keys: impl Iterator<Item = &'a String> + Clone) -> Result<(), Error> {
    let has = |key: &str| keys.clone().any(|k| k == key);
    let refused = |why: String| {
        Err(Error::invalid(
            "InvalidTokenSecretTemplate",
            format!("spec.tokenSecret.template.type `{}` {why}", type_.chars().take(80).collect::<String>()),
        ))
    };
    match type_ {
        "Opaque" => Ok(()),
        "kubernetes.io/basic-auth" if has("username") || has("password") => Ok(()),
        "kubernetes.io/basic-auth" => {
            refused("needs a `username` or `password` key in spec.tokenSecret.template.data".into())
        }
        "kubernetes.io/tls" if has("tls.crt") && has("tls.key") => Ok(()),
        "kubernetes.io/tls" => {
            refused("needs the keys `tls.crt` and `tls.key` in spec.tokenSecret.template.data".into())
        }
        _ => {
            let domain = type_.split_once('/').map(|(domain, _)| domain).unwrap_or_default();
            let kubernetes = ["kubernetes.io", "k8s.io"]
                .iter()
                .any(|reserved| domain == *reserved || domain.ends_with(&format!(".{reserved}")));
            if domain.contains('.') && !kubernetes {
                Ok(())
            } else {
                refused(
                    "is not allowed: use `Opaque`, `kubernetes.io/basic-auth`, `kubernetes.io/tls`, or a type of your own domain such as `example.com/token`".into(),
                )
            }
        }
    }
}

/// Renders every data template of `template` from `values`. An error names the key and the line
/// and never carries a secret value.
pub fn render(
    template: &TokenSecretTemplate,
    values: &Values<'_>,
) -> Result<BTreeMap<String, String>, Error> {
    let env = environment();
    let context = context(values);
    let mut rendered = BTreeMap::new();
    let mut total = 0;
    for (key, source) in &template.data {
        let output = env
            .template_from_str(source)
            .and_then(|t| t.render(context.clone()))
            .map_err(|err| template_error(key, &err, values))?;
        total += key.len() + output.len();
        if total > MAX_RENDERED_BYTES {
            return Err(Error::invalid(
                "InvalidTokenSecretTemplate",
                format!(
                    "spec.tokenSecret.template renders more than {} KiB (at key `{key}`); a Secret holds at most 1 MiB",
                    MAX_RENDERED_BYTES / 1024
                ),
            ));
        }
        rendered.insert(key.clone(), output);
    }
    Ok(rendered)
}

/// The engine: no loader, strict undefined values, no auto-escaping, an instruction budget, and
/// the extra filters.
fn environment<'source>() -> Environment<'source> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // A file written as a YAML block (`|`) ends with a newline, and keeps it.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder().keep_trailing_newline(true).build() {
        env.set_syntax(syntax);
    }
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(64);
    env.add_filter("b64encode", |value: String| base64::engine::general_purpose::STANDARD.encode(value));
    env.add_filter("b64decode", |value: String| -> Result<String, minijinja::Error> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(value.trim()).map_err(|_| {
            minijinja::Error::new(ErrorKind::InvalidOperation, "b64decode: the value is not base64")
        })?;
        String::from_utf8(bytes).map_err(|_| {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "b64decode: the decoded value is not UTF-8 text",
            )
        })
    });
    env.add_filter("quote", |value: String| serde_json::Value::String(value).to_string());
    env.add_filter("squote", |value: String| format!("'{}'", value.replace('\'', r"'\''")));
    env
}

fn context(values: &Values<'_>) -> Value {
    let mut map: BTreeMap<&str, Value> = BTreeMap::from([
        ("token", Value::from(values.token.expose_secret())),
        ("instanceId", Value::from(values.instance_id)),
        ("baseUrl", Value::from(values.base_url)),
        ("connector", Value::from(values.connector)),
        ("name", Value::from(values.name)),
        ("namespace", Value::from(values.namespace)),
    ]);
    if let Some(authorization) = values.authorization {
        map.insert(AUTHORIZATION, Value::from(authorization.expose_secret()));
    }
    Value::from_pairs(map)
}

/// The Stalled error for a template that does not parse or render: the key, the line, what is
/// wrong. Secret values are cut out of the engine's words (they never quote a value today; this
/// keeps it so).
fn template_error(key: &str, err: &minijinja::Error, values: &Values<'_>) -> Error {
    let mut what = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    for secret in values.secrets() {
        what = what.replace(secret, "<redacted>");
    }
    if err.kind() == ErrorKind::UndefinedError {
        what.push_str(&format!(" (the values are {})", VALUES.map(|v| format!("`{v}`")).join(", ")));
    }
    let line = err.line().map(|l| format!(" line {l}")).unwrap_or_default();
    Error::invalid(
        "InvalidTokenSecretTemplate",
        format!("spec.tokenSecret.template.data[`{key}`]{line}: {what}"),
    )
}

/// A label or annotation key: an optional DNS subdomain prefix and `/`, then a name of at most 63
/// characters (alphanumerics, `-`, `_`, `.`; alphanumeric at both ends).
fn check_qualified_name(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(label_ok) {
            return Err(
                "the prefix before `/` must be a DNS subdomain (lowercase letters, digits, `-`, `.`)",
            );
        }
    }
    check_name_part(name).map_err(|_| {
        "the name must be 1 to 63 characters: letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit"
    })
}

fn check_name_part(name: &str) -> Result<(), ()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok { Ok(()) } else { Err(()) }
}

fn check_label_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() || check_name_part(value).is_ok() {
        Ok(())
    } else {
        Err(
            "at most 63 characters: letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TemplateMetadata;

    fn template(data: &[(&str, &str)]) -> TokenSecretTemplate {
        TokenSecretTemplate {
            data: data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..TokenSecretTemplate::default()
        }
    }

    fn with<T>(authorization: Option<&str>, f: impl FnOnce(&Values<'_>) -> T) -> T {
        let token = SecretString::from("tok-SECRET");
        let authorization = authorization.map(SecretString::from);
        let values = Values {
            token: &token,
            instance_id: 42,
            base_url: "https://api.example/elements/api-v2",
            connector: "zendesk",
            name: "desk",
            namespace: "team-a",
            authorization: authorization.as_ref(),
        };
        f(&values)
    }

    fn reason_and_message(err: Error) -> (&'static str, String) {
        match err {
            Error::Invalid { reason, message } => (reason, message),
            other => panic!("not a Stalled error: {other:?}"),
        }
    }

    #[test]
    fn renders_values_and_filters() {
        let t = template(&[
            ("OPENCONNECTORS_AUTHORIZATION", "{{ authorization }}"),
            (
                "config.json",
                r#"{"token": {{ token | tojson }}, "id": {{ instanceId }}, "url": {{ baseUrl | tojson }}}"#,
            ),
            ("app.properties", "connector={{ connector }}\nname={{ namespace }}/{{ name }}\n"),
            ("b64", "{{ token | b64encode }}"),
            ("roundtrip", "{{ token | b64encode | b64decode }}"),
            ("quoted", "{{ 'say \"hi\"' | quote }} {{ \"it's\" | squote }}"),
        ]);
        let rendered = with(Some("User u, Organization o, Element tok-SECRET"), |v| render(&t, v)).unwrap();
        assert_eq!(rendered["OPENCONNECTORS_AUTHORIZATION"], "User u, Organization o, Element tok-SECRET");
        let json: serde_json::Value = serde_json::from_str(&rendered["config.json"]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"token": "tok-SECRET", "id": 42, "url": "https://api.example/elements/api-v2"})
        );
        assert_eq!(rendered["app.properties"], "connector=zendesk\nname=team-a/desk\n");
        assert_eq!(rendered["b64"], "dG9rLVNFQ1JFVA==");
        assert_eq!(rendered["roundtrip"], "tok-SECRET");
        assert_eq!(rendered["quoted"], r#""say \"hi\"" 'it'\''s'"#);
        // A key named like a JSON file is not escaped behind the user's back.
        let plain = with(None, |v| render(&template(&[("x.json", "{{ token }}")]), v)).unwrap();
        assert_eq!(plain["x.json"], "tok-SECRET");
    }

    #[test]
    fn errors_name_the_key_and_line_and_never_a_secret() {
        let cases: [(&str, &str); 6] = [
            ("{{ tokn }}", "undefined"),
            ("line one\n{% if token %}\n{{ token | nosuchfilter }}\n{% endif %}", "line 3"),
            ("{{ token", "syntax error"),
            ("{{ token | b64decode }}", "not base64"),
            ("{% include 'other' %}", "unknown statement include"),
            ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "fuel"),
        ];
        for (source, expected) in cases {
            let t = template(&[("bad-key", source)]);
            let err =
                with(Some("User u, Organization o, Element tok-SECRET"), |v| render(&t, v)).unwrap_err();
            let (reason, message) = reason_and_message(err);
            assert_eq!(reason, "InvalidTokenSecretTemplate");
            assert!(message.contains("data[`bad-key`]"), "{message}");
            assert!(message.to_lowercase().contains(expected), "{source}: {message}");
            assert!(!message.contains("tok-SECRET") && !message.contains("Organization o"), "{message}");
        }
        // Values that could only leak through an error (a secret used as a number, a key, an
        // attribute) are cut out.
        for source in [
            "{{ token | int }}",
            "{{ {}[token] }}",
            "{{ token.foo }}",
            "{{ range(token) }}",
            "{{ authorization + 1 }}",
        ] {
            let t = template(&[("k", source)]);
            let err =
                with(Some("User u, Organization o, Element tok-SECRET"), |v| render(&t, v)).unwrap_err();
            let (_, message) = reason_and_message(err);
            assert!(
                !message.contains("tok-SECRET") && !message.contains("Organization o"),
                "{source}: {message}"
            );
        }
        // Without the opt-in the value does not exist: asking for it is an error too.
        let err = with(None, |v| render(&template(&[("a", "{{ authorization }}")]), v)).unwrap_err();
        assert!(reason_and_message(err).1.contains("undefined"));
    }

    #[test]
    fn the_authorization_value_is_found_wherever_it_is_used() {
        assert!(uses_authorization(&template(&[("a", "{{ authorization }}")])));
        assert!(uses_authorization(&template(&[(
            "a",
            "{% if x %}{{ authorization | b64encode }}{% endif %}"
        )])));
        assert!(uses_authorization(&template(&[("a", "{% set h = authorization %}{{ h }}")])));
        assert!(!uses_authorization(&template(&[("a", "{{ token }}"), ("b", "authorization")])));
        assert!(!uses_authorization(&template(&[("a", "{% set authorization = 'x' %}{{ authorization }}")])));
    }

    #[test]
    fn metadata_keys_are_checked_and_reserved_ones_refused() {
        let meta = |labels: &[(&str, &str)], annotations: &[(&str, &str)]| TokenSecretTemplate {
            metadata: Some(TemplateMetadata {
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            }),
            ..TokenSecretTemplate::default()
        };
        assert!(
            check_metadata(&meta(
                &[("team", "a"), ("example.com/tier", "gold")],
                &[("reloader.stakater.com/match", "true")]
            ))
            .is_ok()
        );
        for (labels, annotations) in [
            (vec![("app.kubernetes.io/managed-by", "me")], vec![]),
            (vec![("openconnectors.io/connector-instance", "x")], vec![]),
            (vec![], vec![("openconnectors.io/token-sha256", "x")]),
            (vec![], vec![("sub.openconnectors.io/x", "x")]),
            (vec![("app.kubernetes.io/instance", "argo-app")], vec![]),
            (vec![], vec![("argocd.argoproj.io/tracking-id", "x")]),
            (vec![("kustomize.toolkit.fluxcd.io/name", "x")], vec![]),
            (vec![], vec![("meta.helm.sh/release-name", "x")]),
            (vec![("Bad Key", "x")], vec![]),
            (vec![("UPPER.example/x", "x")], vec![]),
            (vec![("team", "not a valid value")], vec![]),
            (vec![("team", &*"a".repeat(64))], vec![]),
        ] {
            let err = check_metadata(&meta(&labels, &annotations)).unwrap_err();
            let (reason, message) = reason_and_message(err);
            assert_eq!(reason, "InvalidTokenSecretTemplate", "{labels:?} {annotations:?}");
            assert!(message.contains("spec.tokenSecret.template.metadata"), "{message}");
        }
    }

    #[test]
    fn only_safe_secret_types_are_allowed() {
        let keys = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<String>>();
        let token = keys(&["token", "instanceId"]);
        let basic = keys(&["username", "password"]);
        let tls = keys(&["tls.crt", "tls.key"]);
        // (type, data keys, allowed)
        let cases: Vec<(&str, &Vec<String>, bool)> = vec![
            ("Opaque", &token, true),
            ("kubernetes.io/basic-auth", &basic, true),
            ("kubernetes.io/basic-auth", &token, false),
            ("kubernetes.io/tls", &tls, true),
            ("kubernetes.io/tls", &token, false),
            ("example.com/connector-token", &token, true),
            ("kubernetes.io/service-account-token", &token, false),
            ("kubernetes.io/dockerconfigjson", &token, false),
            ("kubernetes.io/ssh-auth", &token, false),
            ("bootstrap.kubernetes.io/token", &token, false),
            ("x.k8s.io/y", &token, false),
            ("opaque", &token, false),
            ("token", &token, false),
        ];
        for (type_, data, allowed) in cases {
            let result = check_type(type_, data.iter());
            assert_eq!(result.is_ok(), allowed, "{type_} with {data:?}: {result:?}");
            if let Err(err) = result {
                let (reason, message) = reason_and_message(err);
                assert_eq!(reason, "InvalidTokenSecretTemplate");
                assert!(message.contains("spec.tokenSecret.template.type"), "{message}");
            }
        }
    }

    #[test]
    fn kubernetes_reserved_keys_are_refused_in_annotations_and_labels() {
        let meta = |labels: &[(&str, &str)], annotations: &[(&str, &str)]| TokenSecretTemplate {
            metadata: Some(TemplateMetadata {
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            }),
            ..TokenSecretTemplate::default()
        };
        for (labels, annotations) in [
            (vec![], vec![("kubernetes.io/service-account.name", "default")]),
            (vec![], vec![("kubernetes.io/service-account.uid", "x")]),
            (vec![], vec![("app.kubernetes.io/name", "x")]),
            (vec![], vec![("node.k8s.io/x", "x")]),
            (vec![("kubernetes.io/metadata.name", "x")], vec![]),
            (vec![("topology.kubernetes.io/zone", "x")], vec![]),
        ] {
            let err = check_metadata(&meta(&labels, &annotations)).unwrap_err();
            let (_, message) = reason_and_message(err);
            assert!(message.contains("reserved by Kubernetes"), "{labels:?} {annotations:?}: {message}");
        }
        assert!(check_metadata(&meta(&[("app.kubernetes.io/part-of", "crm")], &[])).is_ok());
    }
}
