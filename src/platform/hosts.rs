//! Which platform hosts the operator may call (`--allowed-platform-hosts`). A namespace editor
//! names a platform's base URL; the operator's administrator names the hosts it may be on. A
//! platform elsewhere is refused before any connection.
//!
//! Patterns are host names compared label by label, case-insensitively; a `*` label stands for
//! one or more labels. The default, [`DEFAULT_PATTERN`], admits the SAP Open Connectors hosts
//! (`api.openconnectors.<region>.ext.hana.ondemand.com`, `…ext.hanatrial.ondemand.com`).

/// The hosts always allowed: SAP's Open Connectors API hosts.
pub const DEFAULT_PATTERN: &str = "*.openconnectors.*.ondemand.com";

/// The allowed host patterns: [`DEFAULT_PATTERN`] plus the administrator's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    patterns: Vec<String>,
}

impl Default for AllowedHosts {
    fn default() -> Self {
        AllowedHosts { patterns: vec![DEFAULT_PATTERN.to_string()] }
    }
}

impl AllowedHosts {
    /// The default plus `extra` (host names, IP addresses or patterns such as `*.example.com`).
    /// Refuses an entry that is no host name pattern (a URL, a port, a path, spaces).
    pub fn with(extra: &[String]) -> Result<AllowedHosts, String> {
        let mut hosts = AllowedHosts::default();
        for entry in extra.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let valid = entry
                .split('.')
                .all(|label| label == "*" || (!label.is_empty() && label.bytes().all(valid_host_byte)))
                || is_bracketed_ipv6(entry);
            if !valid {
                return Err(format!(
                    "`{entry}` is not a host name pattern (a host such as `api.example.com`, an IP \
                     address, or `*.example.com`; no scheme, port or path)"
                ));
            }
            hosts.patterns.push(entry.to_ascii_lowercase());
        }
        Ok(hosts)
    }

    /// Whether `host` (as in a URL: an IPv6 address in brackets) matches one of the patterns.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        self.patterns.iter().any(|pattern| {
            let pattern: Vec<&str> = pattern.split('.').collect();
            matches(&pattern, &labels)
        })
    }

    /// The patterns, for messages.
    pub fn describe(&self) -> String {
        self.patterns.join(", ")
    }
}

fn valid_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_bracketed_ipv6(entry: &str) -> bool {
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .is_some_and(|inner| inner.parse::<std::net::Ipv6Addr>().is_ok())
}

/// `*` matches one or more labels; any other label matches itself.
fn matches(pattern: &[&str], host: &[&str]) -> bool {
    match (pattern.split_first(), host.split_first()) {
        (None, None) => true,
        (Some((&"*", rest)), Some(_)) => (1..=host.len()).any(|taken| matches(rest, &host[taken..])),
        (Some((label, rest)), Some((first, others))) => label == first && matches(rest, others),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_admits_sap_hosts_and_nothing_else() {
        let hosts = AllowedHosts::default();
        let cases = [
            ("api.openconnectors.us2.ext.hana.ondemand.com", true),
            ("api.openconnectors.eu10.ext.hana.ondemand.com", true),
            ("API.OpenConnectors.trial.us10.ext.hana.ondemand.com.", true),
            ("api.openconnectors.ext.hanatrial.ondemand.com", true),
            ("openconnectors.ext.hana.ondemand.com", false),
            ("api.openconnectors.ondemand.com", false),
            ("api.openconnectors.attacker.example", false),
            ("api.openconnectors.us2.ondemand.com.attacker.example", false),
            ("127.0.0.1", false),
            ("localhost", false),
            ("api.cloud-elements.com", false),
        ];
        for (host, allowed) in cases {
            assert_eq!(hosts.allows(host), allowed, "{host}");
        }
    }

    #[test]
    fn the_administrator_adds_hosts_ips_and_patterns() {
        let hosts = AllowedHosts::with(&[
            "127.0.0.1".into(),
            " api.cloud-elements.com ".into(),
            "*.corp.example".into(),
            "[::1]".into(),
            String::new(),
        ])
        .unwrap();
        let cases = [
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("api.cloud-elements.com", true),
            ("x.api.cloud-elements.com", false),
            ("a.b.corp.example", true),
            ("corp.example", false),
            ("[::1]", true),
            ("api.openconnectors.us2.ext.hana.ondemand.com", true),
        ];
        for (host, allowed) in cases {
            assert_eq!(hosts.allows(host), allowed, "{host}");
        }
    }

    #[test]
    fn entries_that_are_no_host_pattern_are_refused() {
        for entry in
            ["https://api.example.com", "api.example.com:443", "api.example.com/x", "a b", "a..b", "[zz]"]
        {
            let err = AllowedHosts::with(&[entry.to_string()]).unwrap_err();
            assert!(err.contains(entry), "{err}");
        }
    }
}
