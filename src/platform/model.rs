//! Typed platform bodies, after the published Swagger (`ElementInstance`, `Element`, `User`) and
//! the element catalog's `ElementConfig`.
//!
//! Parsing is lenient where the platform is known to vary (ids as floats, tags as objects, `null`
//! or non-string configuration values, `mandatory` instead of `required`) and ignores unknown
//! fields; it never panics.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

/// What to send when creating (`POST /instances`) or re-authenticating (`PUT /instances/{id}`)
/// an instance. Every configuration and provider value is treated as a secret.
#[derive(Clone, Default)]
pub struct InstanceRequest {
    /// The connector (element) key, e.g. `zendesk`.
    pub element_key: String,
    /// The instance's display name.
    pub name: String,
    /// The full tag list (the platform replaces tags, it does not merge them).
    pub tags: Vec<String>,
    /// Connector configuration (`username`, `password`, `event.*`, ...).
    pub configuration: BTreeMap<String, SecretString>,
    /// OAuth results (`code`, ...); sent only when not empty.
    pub provider_data: BTreeMap<String, SecretString>,
    /// `none` or `initial` (create from an existing refresh token); sent only when set.
    pub external_authentication: Option<String>,
}

impl fmt::Debug for InstanceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceRequest")
            .field("element_key", &self.element_key)
            .field("name", &self.name)
            .field("tags", &self.tags)
            .field("configuration_keys", &self.configuration.keys())
            .field("provider_data_keys", &self.provider_data.keys())
            .field("external_authentication", &self.external_authentication)
            .finish()
    }
}

impl InstanceRequest {
    /// The JSON body sent to the platform, in the Swagger's `ElementInstance` request shape:
    /// `{"element":{"key":..},"name":..,"configuration":{..},"tags":[..]}` (+ `providerData`,
    /// `externalAuthentication` when set).
    ///
    /// The result holds every secret in clear text: send it, never log it.
    pub fn to_body(&self) -> Value {
        let exposed = |map: &BTreeMap<String, SecretString>| -> Map<String, Value> {
            map.iter().map(|(k, v)| (k.clone(), Value::String(v.expose_secret().to_string()))).collect()
        };
        let mut body = Map::new();
        body.insert("element".into(), json!({ "key": self.element_key }));
        body.insert("name".into(), Value::String(self.name.clone()));
        body.insert("configuration".into(), Value::Object(exposed(&self.configuration)));
        body.insert("tags".into(), json!(self.tags));
        if !self.provider_data.is_empty() {
            body.insert("providerData".into(), Value::Object(exposed(&self.provider_data)));
        }
        if let Some(ext) = &self.external_authentication {
            body.insert("externalAuthentication".into(), Value::String(ext.clone()));
        }
        Value::Object(body)
    }
}

/// The parameters of `POST /elements/{key}/oauth/url` (the SDK's `OAuthInfo`).
#[derive(Clone)]
pub struct OAuthUrlRequest {
    /// The client id (`apiKey`).
    pub api_key: String,
    /// The client secret (`apiSecret`).
    pub api_secret: SecretString,
    /// The redirect URI (`callbackUrl`).
    pub callback_url: String,
    /// Scopes (`scope`), if any.
    pub scope: Option<String>,
    /// The OAuth `state` echoed back to the callback.
    pub state: String,
}

impl fmt::Debug for OAuthUrlRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthUrlRequest")
            .field("api_key", &self.api_key)
            .field("callback_url", &self.callback_url)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl OAuthUrlRequest {
    /// The JSON body. It holds the client secret in clear text: send it, never log it.
    pub fn to_body(&self) -> Value {
        let mut body = Map::new();
        body.insert("apiKey".into(), Value::String(self.api_key.clone()));
        body.insert("apiSecret".into(), Value::String(self.api_secret.expose_secret().to_string()));
        body.insert("callbackUrl".into(), Value::String(self.callback_url.clone()));
        if let Some(scope) = &self.scope {
            body.insert("scope".into(), Value::String(scope.clone()));
        }
        body.insert("state".into(), Value::String(self.state.clone()));
        Value::Object(body)
    }
}

/// The answer of `/elements/{key}/oauth/url` (the SDK's `OAuthRedirect`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuthRedirect {
    /// The element key.
    #[serde(default)]
    pub element: Option<String>,
    /// Where to send the person's browser.
    #[serde(default)]
    pub oauth_url: Option<String>,
}

/// The body of `PATCH /instances/{id}`: name and the full tag list.
pub fn patch_body(name: &str, tags: &[String]) -> Value {
    json!({ "name": name, "tags": tags })
}

/// A connector instance as the platform returns it. Secrets in `configuration` come back masked
/// (`********`); `token` is the instance token (redacted in `Debug`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ElementInstance {
    /// Instance id, for `/instances/{id}`.
    #[serde(deserialize_with = "de_id")]
    pub id: i64,
    /// Display name.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub name: Option<String>,
    /// The instance token pods use (`Authorization: ..., Element <token>`).
    #[serde(default, deserialize_with = "de_opt_secret")]
    pub token: Option<SecretString>,
    /// The connector.
    #[serde(default)]
    pub element: Option<Element>,
    /// The connector's id, seen in newer responses.
    #[serde(default, deserialize_with = "de_opt_id")]
    pub element_id: Option<i64>,
    /// Configuration; values are strings, `null`, or masked secrets.
    #[serde(default, deserialize_with = "de_configuration")]
    pub configuration: BTreeMap<String, Option<String>>,
    /// Tags (accepted as strings or as `{id, name}` objects).
    #[serde(default, deserialize_with = "de_tags")]
    pub tags: Vec<String>,
    /// `false` when the platform thinks the authentication is broken.
    #[serde(default, deserialize_with = "de_opt_bool")]
    pub valid: Option<bool>,
    /// `true` when disabled (by the enable API or by auto-disable).
    #[serde(default, deserialize_with = "de_opt_bool")]
    pub disabled: Option<bool>,
    /// Whether events (polling or webhooks) are on.
    #[serde(default, deserialize_with = "de_opt_bool")]
    pub events_enabled: Option<bool>,
    /// `none` or `initial`.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub external_authentication: Option<String>,
    /// Creation time as the platform sent it (ISO-8601 string).
    #[serde(default, deserialize_with = "de_opt_string")]
    pub created_date: Option<String>,
    /// Free-text description.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub description: Option<String>,
    /// The platform user owning the instance.
    #[serde(default)]
    pub user: Option<User>,
}

/// The connector (element) of an instance.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Element {
    /// Numeric element id.
    #[serde(default, deserialize_with = "de_opt_id")]
    pub id: Option<i64>,
    /// Element key, e.g. `sfdc`.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub key: Option<String>,
    /// Display name.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub name: Option<String>,
    /// Hub (`crm`, `helpdesk`, ...).
    #[serde(default, deserialize_with = "de_opt_string")]
    pub hub: Option<String>,
    /// `basic`, `oauth2`, `apiKey`, `custom`, ...
    #[serde(default, deserialize_with = "de_opt_string")]
    pub authentication_type: Option<String>,
    /// Older flag for OAuth connectors.
    #[serde(default, deserialize_with = "de_opt_bool")]
    pub type_oauth: Option<bool>,
}

/// The platform user an instance belongs to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// User id.
    #[serde(default, deserialize_with = "de_opt_id")]
    pub id: Option<i64>,
    /// E-mail address.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub email_address: Option<String>,
}

/// One configuration definition of a connector (`GET /elements/{key}/configuration`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "RawElementConfig")]
pub struct ElementConfig {
    /// Configuration key, e.g. `zendesk.subdomain`.
    pub key: String,
    /// Display name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// `TEXTFIELD_32`, `PASSWORD`, `BOOLEAN`, ...
    pub r#type: Option<String>,
    /// Must be given on create (also read from the older `mandatory`).
    pub required: bool,
    /// Not user input; normally keeps its `default_value`.
    pub hide_from_console: bool,
    /// Default value, if any.
    pub default_value: Option<String>,
}

impl ElementConfig {
    /// Whether values of this key should be held in a Kubernetes Secret: `PASSWORD` entries and
    /// OAuth keys, which the platform masks.
    pub fn is_secret(&self) -> bool {
        self.r#type.as_deref() == Some("PASSWORD") || self.key.starts_with("oauth.")
    }

    /// Whether the user has to give a value (required, visible, no default).
    pub fn needs_user_value(&self) -> bool {
        self.required && !self.hide_from_console && self.default_value.is_none()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawElementConfig {
    #[serde(default, deserialize_with = "de_opt_string")]
    key: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    name: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    description: Option<String>,
    #[serde(default, rename = "type", deserialize_with = "de_opt_string")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    config_data_type: Option<String>,
    #[serde(default, deserialize_with = "de_opt_bool")]
    required: Option<bool>,
    #[serde(default, deserialize_with = "de_opt_bool")]
    mandatory: Option<bool>,
    #[serde(default, deserialize_with = "de_opt_bool")]
    hide_from_console: Option<bool>,
    #[serde(default, deserialize_with = "de_opt_string")]
    default_value: Option<String>,
}

impl From<RawElementConfig> for ElementConfig {
    fn from(raw: RawElementConfig) -> Self {
        ElementConfig {
            key: raw.key.unwrap_or_default(),
            name: raw.name,
            description: raw.description,
            r#type: raw.kind.or(raw.config_data_type),
            required: raw.required.or(raw.mandatory).unwrap_or(false),
            hide_from_console: raw.hide_from_console.unwrap_or(false),
            default_value: raw.default_value,
        }
    }
}

/// `GET /elements/{key}/configuration` answers `{"configuration": [...]}`; older hosts a bare array.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum ElementConfigList {
    Wrapped {
        #[serde(default)]
        configuration: Vec<ElementConfig>,
    },
    Bare(Vec<ElementConfig>),
}

impl ElementConfigList {
    pub(crate) fn into_vec(self) -> Vec<ElementConfig> {
        let list = match self {
            ElementConfigList::Wrapped { configuration } => configuration,
            ElementConfigList::Bare(list) => list,
        };
        list.into_iter().filter(|c| !c.key.is_empty()).collect()
    }
}

/// Result of `DELETE /instances/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The platform deleted it now.
    Deleted,
    /// It was already gone (404), which counts as done.
    AlreadyGone,
}

/// Reads a JSON number (integer, or a float without fraction like `123.0`) or a numeric string
/// as an id.
pub(crate) fn id_from_value(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            let f = n.as_f64()?;
            // 2^63 as f64; anything at or beyond it does not fit an i64.
            (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.223_372_036_854_776e18).then_some(f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(super) fn de_id<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let value = Value::deserialize(d)?;
    id_from_value(&value).ok_or_else(|| serde::de::Error::custom("id is not an integer number"))
}

fn de_opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(id_from_value(&Value::deserialize(d)?))
}

fn scalar_text(value: Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn de_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(scalar_text(Value::deserialize(d)?))
}

fn de_opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Some(SecretString::from(s)),
        _ => None,
    })
}

fn de_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => Some(b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    })
}

fn de_configuration<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Option<String>>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Object(map) => map.into_iter().map(|(k, v)| (k, scalar_text(v))).collect(),
        _ => BTreeMap::new(),
    })
}

pub(super) fn de_tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items.into_iter().filter_map(tag_name).collect(),
        _ => Vec::new(),
    })
}

/// A tag is a string, or (in old answers) an object `{id, name}`.
fn tag_name(value: Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s),
        Value::Object(mut map) => map.remove("name").and_then(scalar_text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> ElementInstance {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ids_as_integers_floats_and_strings() {
        assert_eq!(parse(json!({"id": 123})).id, 123);
        assert_eq!(parse(json!({"id": 123.0})).id, 123);
        assert_eq!(parse(json!({"id": "77"})).id, 77);
        assert!(serde_json::from_value::<ElementInstance>(json!({"id": 1.5})).is_err());
        assert!(serde_json::from_value::<ElementInstance>(json!({"id": 1e300})).is_err());
        assert!(serde_json::from_value::<ElementInstance>(json!({"id": null})).is_err());
        assert!(serde_json::from_value::<ElementInstance>(json!({"name": "x"})).is_err());
        let e = parse(json!({"id": 1, "elementId": 23.0, "element": {"id": "23", "key": "sfdc"}}));
        assert_eq!(e.element_id, Some(23));
        assert_eq!(e.element.unwrap().id, Some(23));
    }

    #[test]
    fn tags_as_strings_or_objects() {
        let e = parse(json!({"id": 1, "tags": ["a", {"id": 5, "name": "b"}, 7, null]}));
        assert_eq!(e.tags, vec!["a".to_string(), "b".to_string()]);
        assert!(parse(json!({"id": 1, "tags": null})).tags.is_empty());
    }

    #[test]
    fn configuration_values_null_and_scalars() {
        let e = parse(json!({"id": 1, "configuration": {
            "a": "x", "b": null, "c": true, "d": 15, "password": "********"}}));
        assert_eq!(e.configuration["a"].as_deref(), Some("x"));
        assert_eq!(e.configuration["b"], None);
        assert_eq!(e.configuration["c"].as_deref(), Some("true"));
        assert_eq!(e.configuration["d"].as_deref(), Some("15"));
        assert!(parse(json!({"id": 1, "configuration": null})).configuration.is_empty());
    }

    #[test]
    fn unknown_fields_ignored_and_token_redacted() {
        let e = parse(json!({"id": 1, "token": "SECRETTOKEN=", "whatever": {"x": 1},
            "valid": "true", "disabled": false}));
        assert_eq!(e.valid, Some(true));
        assert_eq!(e.disabled, Some(false));
        assert_eq!(e.token.as_ref().unwrap().expose_secret(), "SECRETTOKEN=");
        assert!(!format!("{e:?}").contains("SECRETTOKEN"));
    }

    #[test]
    fn element_config_required_or_mandatory() {
        let list: ElementConfigList = serde_json::from_value(json!({"configuration": [
            {"key": "password", "type": "PASSWORD", "required": true},
            {"key": "old", "configDataType": "TEXTFIELD_32", "mandatory": true, "hideFromConsole": true, "defaultValue": "x"},
            {"name": "no key"}
        ]}))
        .unwrap();
        let list = list.into_vec();
        assert_eq!(list.len(), 2);
        assert!(list[0].required && list[0].is_secret() && list[0].needs_user_value());
        assert!(list[1].required && list[1].hide_from_console);
        assert_eq!(list[1].r#type.as_deref(), Some("TEXTFIELD_32"));
        assert!(!list[1].needs_user_value());
        let bare: ElementConfigList =
            serde_json::from_value(json!([{"key": "k", "required": "true"}])).unwrap();
        assert!(bare.into_vec()[0].required);
    }

    #[test]
    fn request_debug_prints_keys_only() {
        let req = InstanceRequest {
            element_key: "zendesk".into(),
            name: "n".into(),
            tags: vec!["t".into()],
            configuration: [("password".to_string(), SecretString::from("hunter2"))].into(),
            provider_data: [("code".to_string(), SecretString::from("grant-code"))].into(),
            external_authentication: None,
        };
        let dbg = format!("{req:?}");
        assert!(dbg.contains("password") && !dbg.contains("hunter2") && !dbg.contains("grant-code"));
        let body = req.to_body();
        assert_eq!(body["element"]["key"], "zendesk");
        assert_eq!(body["configuration"]["password"], "hunter2");
        assert_eq!(body["providerData"]["code"], "grant-code");
        assert!(body.get("externalAuthentication").is_none());
    }
}
