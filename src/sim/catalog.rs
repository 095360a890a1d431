//! The simulator's built-in connector catalog.

use serde_json::{Value, json};

/// How a connector authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthKind {
    Basic,
    ApiKey,
    OAuth2,
    Custom,
}

impl AuthKind {
    /// The `authenticationType` the platform shows.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AuthKind::Basic => "basic",
            AuthKind::ApiKey => "apiKey",
            AuthKind::OAuth2 => "oauth2",
            AuthKind::Custom => "custom",
        }
    }
}

/// One configuration definition.
#[derive(Debug, Clone)]
pub(crate) struct ConfigDef {
    pub key: &'static str,
    pub name: &'static str,
    pub kind: &'static str,
    pub required: bool,
    pub hide_from_console: bool,
    pub default_value: Option<&'static str>,
}

impl ConfigDef {
    /// Values the platform masks in every answer.
    pub fn is_masked(&self) -> bool {
        self.kind == "PASSWORD"
    }

    /// Must the caller give a value?
    pub fn needs_value(&self) -> bool {
        self.required && !self.hide_from_console && self.default_value.is_none()
    }
}

/// One connector (element).
#[derive(Debug, Clone)]
pub(crate) struct ElementDef {
    pub id: i64,
    pub key: &'static str,
    pub name: &'static str,
    pub hub: &'static str,
    pub auth: AuthKind,
    pub config: Vec<ConfigDef>,
}

const fn def(key: &'static str, name: &'static str, kind: &'static str, required: bool) -> ConfigDef {
    ConfigDef { key, name, kind, required, hide_from_console: false, default_value: None }
}

fn common_event_keys() -> Vec<ConfigDef> {
    vec![
        ConfigDef {
            default_value: Some("false"),
            ..def("event.notification.enabled", "Events Enabled", "BOOLEAN", false)
        },
        def("event.vendor.type", "Event Type", "TEXTFIELD_32", false),
        def("event.notification.callback.url", "Event Notification Callback URL", "TEXTFIELD_1000", false),
        def("event.notification.signature.key", "Callback Notification Signature Key", "PASSWORD", false),
        ConfigDef {
            default_value: Some("15"),
            ..def(
                "event.poller.refresh_interval",
                "Event poller refresh interval (mins)",
                "TEXTFIELD_32",
                false,
            )
        },
        ConfigDef {
            hide_from_console: true,
            default_value: Some("{}"),
            ..def("event.poller.configuration", "Configure Polling", "TEXTAREA", false)
        },
        ConfigDef {
            default_value: Some("true"),
            ..def("filter.response.nulls", "Filter null values from the response", "BOOLEAN", false)
        },
    ]
}

fn element(
    id: i64,
    key: &'static str,
    name: &'static str,
    hub: &'static str,
    auth: AuthKind,
    own: Vec<ConfigDef>,
) -> ElementDef {
    let mut config = own;
    config.extend(common_event_keys());
    ElementDef { id, key, name, hub, auth, config }
}

/// The built-in catalog: a basic-auth, an API-key, an OAuth2 and a no-configuration connector.
pub(crate) fn builtin() -> Vec<ElementDef> {
    vec![
        element(
            41,
            "zendesk",
            "Zendesk",
            "helpdesk",
            AuthKind::Basic,
            vec![
                def("username", "Username", "TEXTFIELD_128", true),
                def("password", "Password", "PASSWORD", true),
                def("zendesk.subdomain", "Subdomain", "TEXTFIELD_128", true),
            ],
        ),
        element(
            1215,
            "hubspot",
            "HubSpot",
            "marketing",
            AuthKind::ApiKey,
            vec![def("hubspot.authorization.apikey", "API Key", "PASSWORD", true)],
        ),
        element(
            23,
            "sfdc",
            "Salesforce Sales Cloud",
            "crm",
            AuthKind::OAuth2,
            vec![
                def("oauth.api.key", "OAuth API Key", "TEXTFIELD_128", true),
                def("oauth.api.secret", "OAuth API Secret", "PASSWORD", true),
                def("oauth.callback.url", "OAuth Callback URL", "TEXTFIELD_1000", true),
                def("oauth.scope", "OAuth Scope", "TEXTFIELD_1000", false),
                def("oauth.user.refresh_token", "OAuth Refresh Token", "PASSWORD", false),
            ],
        ),
        element(
            9001,
            "echo",
            "Echo (simulator)",
            "general",
            AuthKind::Custom,
            vec![def("echo.greeting", "Greeting", "TEXTFIELD_128", false)],
        ),
    ]
}

/// The `Element` object of the Swagger, as embedded in instances.
pub(crate) fn element_json(e: &ElementDef) -> Value {
    json!({
        "id": e.id,
        "key": e.key,
        "name": e.name,
        "description": format!("{} connector (simulated)", e.name),
        "hub": e.hub,
        "authenticationType": e.auth.as_str(),
        "typeOauth": e.auth == AuthKind::OAuth2,
        "active": true,
        "deleted": false,
        "transformationsEnabled": true,
        "trialAccount": false,
        "createdDate": 1_500_000_000_000_i64,
        "updatedDate": 1_500_000_000_000_i64,
    })
}

/// The answer of `GET /elements/{key}/configuration`.
pub(crate) fn configuration_json(e: &ElementDef) -> Value {
    let configuration: Vec<Value> = e
        .config
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "id": e.id * 1000 + i as i64,
                "key": c.key,
                "name": c.name,
                "description": c.name,
                "type": c.kind,
                "required": c.required,
                "hideFromConsole": c.hide_from_console,
                "defaultValue": c.default_value,
                "active": true,
                "internal": false,
                "displayOrder": i,
            })
        })
        .collect();
    let provider_data: Vec<Value> = if e.auth == AuthKind::OAuth2 {
        vec![json!({"key": "code", "name": "OAuth grant code", "type": "TEXTFIELD_1000"})]
    } else {
        Vec::new()
    };
    json!({ "configuration": configuration, "providerData": provider_data })
}
