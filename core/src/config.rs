//! The filter's configuration: the JSON wire format ([`FilterConfig`]) and its validation into a
//! ready-to-use [`Compiled`] value.
//!
//! The wire format is what Istio's `WasmPlugin.spec.pluginConfig` and Envoy's Wasm `configuration`
//! carry: JSON, camelCase, a `version` field, unknown fields tolerated. Rollouts are an object keyed
//! by rollout name so that several controllers' server-side applies can own one key each.
//!
//! [`parse`] and [`validate`] return every problem at once, each naming the field and the fix.
//! The controller calls [`validate`] on what it generates before pushing it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::json::{self, join, Reader, Value};
use crate::sort::{sort_by, stable_order};

use crate::bucket::FULL_WEIGHT_BP;

/// The config format version this crate reads and writes.
pub const CONFIG_VERSION: u32 = 1;
/// Default request header the route / VirtualService matches on.
pub const DEFAULT_ROUTING_HEADER: &str = "x-cohort-version";
/// Default header that forces a version: `VERSION:TOKEN`.
pub const DEFAULT_FORCE_HEADER: &str = "x-cohort-force";
/// Default response header in which the upstream reports business events.
pub const DEFAULT_EVENTS_HEADER: &str = "x-cohort-events";
/// Default cookie holding the id given to anonymous users.
pub const DEFAULT_ANONYMOUS_COOKIE: &str = "cohort-id";
/// Default lifetime of that cookie: 30 days.
pub const DEFAULT_ANONYMOUS_MAX_AGE_SECONDS: u64 = 30 * 24 * 3600;
/// Default version names.
pub const DEFAULT_STABLE_VERSION: &str = "stable";
/// Default version names.
pub const DEFAULT_CANARY_VERSION: &str = "canary";
/// User keys longer than this are ignored (treated as absent), bounding per-request hashing work.
pub const MAX_KEY_BYTES: usize = 1024;
/// Force tokens shorter than this are refused: a guessable token lets clients pick their version.
pub const MIN_FORCE_TOKEN_BYTES: usize = 16;
/// Bounds that keep metric cardinality and per-config work small.
pub const MAX_EVENTS: usize = 32;
/// Bounds that keep per-config memory small.
pub const MAX_ALLOW_KEYS: usize = 10_000;
const MAX_COOKIE_AGE_SECONDS: u64 = 2 * 365 * 24 * 3600;

/// The filter configuration as it travels on the wire. Its `Debug` does not show the force
/// token.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterConfig {
    /// Format version; must be [`CONFIG_VERSION`].
    pub version: u32,
    /// Request header set to the chosen version name (always overwritten).
    pub routing_header: String,
    /// Request header that forces a version as `VERSION:TOKEN`; always removed before forwarding.
    pub force_header: String,
    /// Secret that the force header must carry; without it forcing is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_token: Option<String>,
    /// Ordered sources of the user key; the first non-empty one wins.
    pub identity: Vec<IdentitySource>,
    /// What happens to requests without a user key.
    pub anonymous: AnonymousPolicy,
    /// Response header listing business events (comma-separated names).
    pub events_header: String,
    /// Event names that are counted; others are ignored (bounded cardinality).
    pub events: Vec<String>,
    /// Rollouts keyed by name.
    pub rollouts: BTreeMap<String, RolloutConfig>,
}

/// One place to read the user key from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySource {
    /// `header` or `cookie`.
    pub kind: String,
    /// Header or cookie name.
    pub name: String,
}

/// Treatment of requests that carry no user key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnonymousPolicy {
    /// `cookie`: give the user a random id in a cookie and bucket it; `stable`: always stable.
    pub mode: String,
    /// Name of that cookie.
    pub cookie_name: String,
    /// `Max-Age` of that cookie in seconds.
    pub max_age_seconds: u64,
}

impl Default for AnonymousPolicy {
    fn default() -> Self {
        AnonymousPolicy {
            mode: default_anonymous_mode(),
            cookie_name: default_anonymous_cookie(),
            max_age_seconds: default_anonymous_max_age(),
        }
    }
}

/// One rollout: which hosts, which weight, which versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutConfig {
    /// Namespace of the CanaryRollout that owns this entry (the `cohort_namespace` metric tag),
    /// so same-named rollouts of different namespaces keep their metrics apart. Empty (absent
    /// on the wire) for a plain Envoy with no namespaces.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Destination hosts (`:authority` without port), as [`HostPattern`] matches them; `*`
    /// matches any host no other rollout claims.
    pub hosts: Vec<String>,
    /// Bucketing salt; defaults to the rollout name. Changing it reshuffles every user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Canary share in basis points, `0..=10000` (500 = 5%).
    pub weight_bp: u32,
    /// Routing header value for stable.
    pub stable_version: String,
    /// Routing header value for canary.
    pub canary_version: String,
    /// Overrides the top-level identity sources for this rollout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Vec<IdentitySource>>,
    /// Cohorts (`0..=99`) that get the canary whenever its weight is above 0.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_cohorts: Vec<u32>,
    /// User keys that get the canary whenever its weight is above 0.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_keys: Vec<String>,
}

impl RolloutConfig {
    /// A rollout for `hosts` with every other field at its default.
    pub fn new(hosts: Vec<String>, weight_bp: u32) -> Self {
        RolloutConfig {
            namespace: String::new(),
            hosts,
            salt: None,
            weight_bp,
            stable_version: default_stable_version(),
            canary_version: default_canary_version(),
            identity: None,
            allow_cohorts: Vec::new(),
            allow_keys: Vec::new(),
        }
    }
}

impl FilterConfig {
    /// A config with no rollouts and every field at its default.
    pub fn new() -> Self {
        FilterConfig {
            version: CONFIG_VERSION,
            routing_header: default_routing_header(),
            force_header: default_force_header(),
            force_token: None,
            identity: Vec::new(),
            anonymous: AnonymousPolicy::default(),
            events_header: default_events_header(),
            events: Vec::new(),
            rollouts: BTreeMap::new(),
        }
    }
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self::new()
    }
}

fn default_routing_header() -> String {
    DEFAULT_ROUTING_HEADER.to_owned()
}
fn default_force_header() -> String {
    DEFAULT_FORCE_HEADER.to_owned()
}
fn default_events_header() -> String {
    DEFAULT_EVENTS_HEADER.to_owned()
}
fn default_anonymous_mode() -> String {
    "cookie".to_owned()
}
fn default_anonymous_cookie() -> String {
    DEFAULT_ANONYMOUS_COOKIE.to_owned()
}
fn default_anonymous_max_age() -> u64 {
    DEFAULT_ANONYMOUS_MAX_AGE_SECONDS
}
fn default_stable_version() -> String {
    DEFAULT_STABLE_VERSION.to_owned()
}
fn default_canary_version() -> String {
    DEFAULT_CANARY_VERSION.to_owned()
}

/// One problem with a config: the field (a dotted path) and what is wrong with how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `rollouts.checkout.weightBp`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Every problem found in one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where the user key comes from, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A request header (name lowercased).
    Header(String),
    /// A cookie in the `cookie` request header.
    Cookie(String),
}

/// Treatment of requests without a user key, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anonymous {
    /// Issue a random id in this cookie and bucket it.
    Cookie {
        /// Cookie name.
        name: String,
        /// `Max-Age` in seconds.
        max_age_seconds: u64,
    },
    /// Send to stable.
    Stable,
}

/// A destination host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Matches the name itself and its Kubernetes service forms, case-insensitively. A one-label
    /// name is read relative to the rollout's namespace, as Istio reads a short host name:
    /// `name.NS`, `name.NS.svc` and `name.NS.svc.DOMAIN` with NS the rollout's namespace, or any
    /// namespace when the rollout has none (plain Envoy). `name.ns` also matches
    /// `name.ns.svc[.DOMAIN]`, `name.ns.svc` also matches `name.ns.svc.DOMAIN`; a longer name
    /// matches only itself.
    Name(String),
    /// Matches any host; used only when no named host matches.
    Any,
}

/// A validated rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// Rollout name (the `cohort_rollout` metric tag).
    pub name: String,
    /// Namespace of its CanaryRollout (the `cohort_namespace` metric tag); may be empty.
    pub namespace: String,
    /// Bucketing salt.
    pub salt: String,
    /// Canary share in basis points.
    pub weight_bp: u32,
    /// Routing header values: stable, then canary.
    pub stable_version: String,
    /// Routing header value for canary.
    pub canary_version: String,
    /// Ordered identity sources.
    pub identity: Vec<Identity>,
    /// Bit `c` set: cohort `c` is allow-listed.
    pub allow_cohorts: u128,
    /// Allow-listed keys, sorted for binary search.
    pub allow_keys: Vec<Vec<u8>>,
    /// Host patterns.
    pub hosts: Vec<HostPattern>,
}

/// A validated config, ready for per-request use. Its `Debug` does not show the force token.
#[derive(Clone, PartialEq, Eq)]
pub struct Compiled {
    /// Routing header name, lowercased.
    pub routing_header: String,
    /// Force header name, lowercased.
    pub force_header: String,
    /// Force token; `None` disables forcing.
    pub force_token: Option<Vec<u8>>,
    /// Anonymous policy.
    pub anonymous: Anonymous,
    /// Events response header name, lowercased.
    pub events_header: String,
    /// Counted event names.
    pub events: Vec<String>,
    /// Rollouts in name order.
    pub rollouts: Vec<Rollout>,
}

/// How `Debug` shows a force token: whether there is one, never what it is.
fn redacted<T>(token: &Option<T>) -> Option<&'static str> {
    token.as_ref().map(|_| "<redacted>")
}

impl fmt::Debug for FilterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilterConfig")
            .field("version", &self.version)
            .field("routing_header", &self.routing_header)
            .field("force_header", &self.force_header)
            .field("force_token", &redacted(&self.force_token))
            .field("identity", &self.identity)
            .field("anonymous", &self.anonymous)
            .field("events_header", &self.events_header)
            .field("events", &self.events)
            .field("rollouts", &self.rollouts)
            .finish()
    }
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compiled")
            .field("routing_header", &self.routing_header)
            .field("force_header", &self.force_header)
            .field("force_token", &redacted(&self.force_token))
            .field("anonymous", &self.anonymous)
            .field("events_header", &self.events_header)
            .field("events", &self.events)
            .field("rollouts", &self.rollouts)
            .finish()
    }
}

/// Parses and validates a config document.
pub fn parse(document: &[u8]) -> Result<Compiled, ConfigErrors> {
    let config = parse_wire(document)?;
    validate(&config)
}

/// Parses a config document without validating it; type errors name the field. Absent fields
/// take their defaults; unknown fields are ignored.
pub fn parse_wire(document: &[u8]) -> Result<FilterConfig, ConfigErrors> {
    let value = json::parse(document).map_err(|error| {
        ConfigErrors(vec![ConfigError {
            field: "(document)".to_owned(),
            problem: format!("not valid JSON ({error}); the config must be one JSON object"),
        }])
    })?;
    let mut r = Reader::default();
    let Some(root) = r.object(&value, "(document)") else {
        return Err(ConfigErrors(r.errors));
    };
    let version = match r.whole_number(root, "", "version", u64::from(u32::MAX)) {
        Some(version) => version as u32,
        None => {
            if !root.contains_key("version") {
                r.error(
                    "version",
                    format!("missing; add \"version\": {CONFIG_VERSION}"),
                );
            }
            0
        }
    };
    let defaults = FilterConfig::new();
    let config = FilterConfig {
        version,
        routing_header: r
            .string(root, "", "routingHeader")
            .unwrap_or(defaults.routing_header),
        force_header: r
            .string(root, "", "forceHeader")
            .unwrap_or(defaults.force_header),
        force_token: r.string(root, "", "forceToken"),
        identity: r
            .list(root, "", "identity", identity_source)
            .unwrap_or_default(),
        anonymous: root
            .get("anonymous")
            .map_or_else(AnonymousPolicy::default, |value| {
                anonymous_policy(&mut r, value)
            }),
        events_header: r
            .string(root, "", "eventsHeader")
            .unwrap_or(defaults.events_header),
        events: r
            .list(root, "", "events", Reader::string_item)
            .unwrap_or_default(),
        rollouts: match root.get("rollouts") {
            None => BTreeMap::new(),
            Some(value) => r
                .object(value, "rollouts")
                .map(|rollouts| {
                    // Inserted one by one: `collect` into a map sorts, and brings its sort code.
                    let mut map = BTreeMap::new();
                    for (name, value) in rollouts {
                        if let Some(rollout) =
                            rollout_config(&mut r, value, &join("rollouts", name))
                        {
                            map.insert(name.clone(), rollout);
                        }
                    }
                    map
                })
                .unwrap_or_default(),
        },
    };
    if r.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(r.errors))
    }
}

fn identity_source(r: &mut Reader, value: &Value, field: &str) -> Option<IdentitySource> {
    let object = r.object(value, field)?;
    let kind = r.string(object, field, "kind");
    let name = r.string(object, field, "name");
    for (key, present) in [("kind", kind.is_some()), ("name", name.is_some())] {
        if !present && !object.contains_key(key) {
            r.error(
                &join(field, key),
                "missing; an identity source has a kind (header or cookie) and a name".to_owned(),
            );
        }
    }
    Some(IdentitySource {
        kind: kind?,
        name: name?,
    })
}

fn anonymous_policy(r: &mut Reader, value: &Value) -> AnonymousPolicy {
    let defaults = AnonymousPolicy::default();
    let Some(object) = r.object(value, "anonymous") else {
        return defaults;
    };
    AnonymousPolicy {
        mode: r
            .string(object, "anonymous", "mode")
            .unwrap_or(defaults.mode),
        cookie_name: r
            .string(object, "anonymous", "cookieName")
            .unwrap_or(defaults.cookie_name),
        max_age_seconds: r
            .whole_number(object, "anonymous", "maxAgeSeconds", u64::MAX)
            .unwrap_or(defaults.max_age_seconds),
    }
}

fn rollout_config(r: &mut Reader, value: &Value, field: &str) -> Option<RolloutConfig> {
    let object = r.object(value, field)?;
    let hosts = r.list(object, field, "hosts", Reader::string_item);
    if hosts.is_none() && !object.contains_key("hosts") {
        r.error(
            &join(field, "hosts"),
            "missing; list the destination hosts this rollout splits".to_owned(),
        );
    }
    let mut rollout = RolloutConfig::new(hosts.unwrap_or_default(), 0);
    if let Some(namespace) = r.string(object, field, "namespace") {
        rollout.namespace = namespace;
    }
    rollout.salt = r.string(object, field, "salt");
    if let Some(weight) = r.whole_number(object, field, "weightBp", u64::from(u32::MAX)) {
        rollout.weight_bp = weight as u32;
    }
    if let Some(version) = r.string(object, field, "stableVersion") {
        rollout.stable_version = version;
    }
    if let Some(version) = r.string(object, field, "canaryVersion") {
        rollout.canary_version = version;
    }
    rollout.identity = r.list(object, field, "identity", identity_source);
    rollout.allow_cohorts = r
        .list(object, field, "allowCohorts", |r, v, f| {
            r.number_item(v, f, u64::from(u32::MAX)).map(|n| n as u32)
        })
        .unwrap_or_default();
    rollout.allow_keys = r
        .list(object, field, "allowKeys", Reader::string_item)
        .unwrap_or_default();
    Some(rollout)
}

/// Validates a wire config into its compiled form, reporting every problem found.
pub fn validate(config: &FilterConfig) -> Result<Compiled, ConfigErrors> {
    let mut errors = Errors::default();

    if config.version != CONFIG_VERSION {
        errors.push(
            "version",
            format!(
                "unsupported config version {}; this filter reads version {CONFIG_VERSION}",
                config.version
            ),
        );
    }
    let routing_header = errors.header_name("routingHeader", &config.routing_header);
    let force_header = errors.header_name("forceHeader", &config.force_header);
    if routing_header.is_some() && routing_header == force_header {
        errors.push(
            "forceHeader",
            "must differ from routingHeader; pick another header name".to_owned(),
        );
    }
    let force_token = config.force_token.as_deref().and_then(|token| {
        if token.len() < MIN_FORCE_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
            errors.push(
                "forceToken",
                format!(
                    "must be at least {MIN_FORCE_TOKEN_BYTES} visible ASCII characters; \
                     generate one with `openssl rand -hex 16`, or remove the field to turn forcing off"
                ),
            );
            None
        } else {
            Some(token.as_bytes().to_vec())
        }
    });
    let identity = errors.identity("identity", &config.identity);
    let anonymous = errors.anonymous(&config.anonymous);
    let events_header = errors.header_name("eventsHeader", &config.events_header);
    errors.event_names(&config.events);

    let mut rollouts = Vec::with_capacity(config.rollouts.len());
    let mut claims = earlier_claims(&config.rollouts).into_iter();
    for (name, rollout) in &config.rollouts {
        let field = format!("rollouts.{name}");
        if !is_dns_label(name) {
            errors.push(
                &field,
                "rollout names are 1-63 characters of a-z, 0-9 and '-', starting and ending \
                 with a letter or digit; rename the key"
                    .to_owned(),
            );
        }
        for (i, host) in rollout.hosts.iter().enumerate() {
            if let Some(other) = claims.next().flatten() {
                errors.push(
                    &format!("{field}.hosts[{i}]"),
                    format!("host \"{host}\" is already claimed by rollout \"{other}\"; each host belongs to one rollout"),
                );
            }
        }
        if let Some(compiled) = errors.rollout(&field, name, rollout, &identity) {
            rollouts.push(compiled);
        }
    }

    match (
        errors.0.is_empty(),
        routing_header,
        force_header,
        anonymous,
        events_header,
    ) {
        (true, Some(routing_header), Some(force_header), Some(anonymous), Some(events_header)) => {
            Ok(Compiled {
                routing_header,
                force_header,
                force_token,
                anonymous,
                events_header,
                events: config.events.clone(),
                rollouts,
            })
        }
        _ => Err(ConfigErrors(errors.0)),
    }
}

/// For each host of each rollout (in map order, then list order), the rollout that listed the same
/// host last before it, if any. One sort instead of a map per config.
fn earlier_claims(rollouts: &BTreeMap<String, RolloutConfig>) -> Vec<Option<&str>> {
    let mut hosts = Vec::new();
    let mut names = Vec::new();
    for (name, rollout) in rollouts {
        for host in &rollout.hosts {
            hosts.push(host.as_str());
            names.push(name.as_str());
        }
    }
    let mut claims = vec![None; hosts.len()];
    for pair in stable_order(&hosts).windows(2) {
        if let [earlier, later] = *pair {
            if hosts.get(earlier) == hosts.get(later) {
                if let Some(claim) = claims.get_mut(later) {
                    *claim = names.get(earlier).copied();
                }
            }
        }
    }
    claims
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, field: &str, problem: String) {
        self.0.push(ConfigError {
            field: field.to_owned(),
            problem,
        });
    }

    fn header_name(&mut self, field: &str, name: &str) -> Option<String> {
        if !is_token(name) || name.starts_with(':') {
            self.push(
                field,
                format!("\"{name}\" is not a valid HTTP header name; use letters, digits and '-'"),
            );
            return None;
        }
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "host" | "cookie" | "content-length" | "transfer-encoding" | "connection"
        ) {
            self.push(
                field,
                format!(
                    "\"{name}\" is reserved by HTTP; use a header of your own such as x-cohort-..."
                ),
            );
            return None;
        }
        Some(lower)
    }

    fn identity(&mut self, field: &str, sources: &[IdentitySource]) -> Vec<Identity> {
        let mut out = Vec::with_capacity(sources.len());
        for (i, source) in sources.iter().enumerate() {
            let field = format!("{field}[{i}]");
            match source.kind.as_str() {
                "header" => {
                    if let Some(name) = self.header_name(&format!("{field}.name"), &source.name) {
                        out.push(Identity::Header(name));
                    }
                }
                "cookie" => {
                    if is_token(&source.name) {
                        out.push(Identity::Cookie(source.name.clone()));
                    } else {
                        self.push(
                            &format!("{field}.name"),
                            format!(
                                "\"{}\" is not a valid cookie name; use letters, digits, '-' and '_'",
                                source.name
                            ),
                        );
                    }
                }
                other => self.push(
                    &format!("{field}.kind"),
                    format!("unknown identity kind \"{other}\"; use \"header\" or \"cookie\""),
                ),
            }
        }
        out
    }

    fn anonymous(&mut self, policy: &AnonymousPolicy) -> Option<Anonymous> {
        match policy.mode.as_str() {
            "stable" => Some(Anonymous::Stable),
            "cookie" => {
                let mut ok = true;
                if !is_token(&policy.cookie_name) {
                    self.push(
                        "anonymous.cookieName",
                        format!(
                            "\"{}\" is not a valid cookie name; use letters, digits, '-' and '_'",
                            policy.cookie_name
                        ),
                    );
                    ok = false;
                }
                if policy.max_age_seconds == 0 || policy.max_age_seconds > MAX_COOKIE_AGE_SECONDS {
                    self.push(
                        "anonymous.maxAgeSeconds",
                        format!(
                            "{} is out of range; use 1..={MAX_COOKIE_AGE_SECONDS} seconds",
                            policy.max_age_seconds
                        ),
                    );
                    ok = false;
                }
                ok.then(|| Anonymous::Cookie {
                    name: policy.cookie_name.clone(),
                    max_age_seconds: policy.max_age_seconds,
                })
            }
            other => {
                self.push(
                    "anonymous.mode",
                    format!("unknown mode \"{other}\"; use \"cookie\" or \"stable\""),
                );
                None
            }
        }
    }

    fn event_names(&mut self, events: &[String]) {
        if events.len() > MAX_EVENTS {
            self.push(
                "events",
                format!(
                    "{} event names; at most {MAX_EVENTS} keep metric cardinality bounded",
                    events.len()
                ),
            );
        }
        for (i, event) in events.iter().enumerate() {
            let valid = !event.is_empty()
                && event.len() <= 64
                && event
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                self.push(
                    &format!("events[{i}]"),
                    format!("\"{event}\" is not a valid event name; use 1-64 characters of letters, digits, '_' and '-'"),
                );
            } else if events[..i].contains(event) {
                self.push(
                    &format!("events[{i}]"),
                    format!("\"{event}\" is listed twice; remove the duplicate"),
                );
            }
        }
    }

    fn rollout(
        &mut self,
        field: &str,
        name: &str,
        rollout: &RolloutConfig,
        default_identity: &[Identity],
    ) -> Option<Rollout> {
        let before = self.0.len();
        if rollout.weight_bp > FULL_WEIGHT_BP {
            self.push(
                &format!("{field}.weightBp"),
                format!(
                    "{} is out of range; use 0..={FULL_WEIGHT_BP} basis points (500 = 5%)",
                    rollout.weight_bp
                ),
            );
        }
        if rollout.hosts.is_empty() {
            self.push(
                &format!("{field}.hosts"),
                "is empty; list the destination hosts this rollout splits".to_owned(),
            );
        }
        let mut hosts = Vec::with_capacity(rollout.hosts.len());
        for (i, host) in rollout.hosts.iter().enumerate() {
            if host == "*" {
                hosts.push(HostPattern::Any);
            } else if is_host_name(host) {
                hosts.push(HostPattern::Name(host.clone()));
            } else {
                self.push(
                    &format!("{field}.hosts[{i}]"),
                    format!("\"{host}\" is not a host name; use lowercase DNS names without port or scheme, or \"*\""),
                );
            }
        }
        if !is_namespace(&rollout.namespace) {
            self.push(
                &format!("{field}.namespace"),
                format!(
                    "\"{}\" is not a namespace name; use {NAMESPACE_RULE}, or omit it outside \
                     Kubernetes",
                    rollout.namespace
                ),
            );
        }
        let salt = rollout.salt.clone().unwrap_or_else(|| name.to_owned());
        if salt.is_empty() || salt.len() > 256 {
            self.push(
                &format!("{field}.salt"),
                "must be 1-256 characters; omit it to use the rollout name".to_owned(),
            );
        }
        for (key, version) in [
            ("stableVersion", &rollout.stable_version),
            ("canaryVersion", &rollout.canary_version),
        ] {
            let valid = !version.is_empty()
                && version.len() <= 63
                && version
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !valid {
                self.push(
                    &format!("{field}.{key}"),
                    format!("\"{version}\" is not a valid version name; use 1-63 characters of letters, digits, '-', '_' and '.'"),
                );
            }
        }
        if rollout.stable_version == rollout.canary_version {
            self.push(
                &format!("{field}.canaryVersion"),
                "equals stableVersion; the two versions need different names".to_owned(),
            );
        }
        let identity = match &rollout.identity {
            Some(sources) => self.identity(&format!("{field}.identity"), sources),
            None => default_identity.to_vec(),
        };
        let mut allow_cohorts = 0u128;
        for (i, &cohort) in rollout.allow_cohorts.iter().enumerate() {
            if cohort < 100 {
                allow_cohorts |= 1u128 << cohort;
            } else {
                self.push(
                    &format!("{field}.allowCohorts[{i}]"),
                    format!("{cohort} is not a cohort; cohorts are 0..=99"),
                );
            }
        }
        if rollout.allow_keys.len() > MAX_ALLOW_KEYS {
            self.push(
                &format!("{field}.allowKeys"),
                format!(
                    "{} keys; at most {MAX_ALLOW_KEYS} (use allowCohorts for larger groups)",
                    rollout.allow_keys.len()
                ),
            );
        }
        for (i, key) in rollout.allow_keys.iter().enumerate() {
            if key.is_empty() || key.len() > MAX_KEY_BYTES {
                self.push(
                    &format!("{field}.allowKeys[{i}]"),
                    format!("keys are 1-{MAX_KEY_BYTES} bytes"),
                );
            }
        }
        if self.0.len() != before {
            return None;
        }
        let mut allow_keys: Vec<Vec<u8>> = rollout
            .allow_keys
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect();
        sort_by(&mut allow_keys, |a, b| a < b);
        allow_keys.dedup();
        Some(Rollout {
            name: name.to_owned(),
            namespace: rollout.namespace.clone(),
            salt,
            weight_bp: rollout.weight_bp,
            stable_version: rollout.stable_version.clone(),
            canary_version: rollout.canary_version.clone(),
            identity,
            allow_cohorts,
            allow_keys,
            hosts,
        })
    }
}

/// An RFC 9110 token (header names, cookie names).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What a namespace name is made of, for the messages that refuse one.
pub const NAMESPACE_RULE: &str =
    "1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit";

/// Whether `namespace` is one a rollout entry may carry: empty (none), or a Kubernetes
/// namespace name ([`NAMESPACE_RULE`]).
pub fn is_namespace(namespace: &str) -> bool {
    namespace.is_empty() || is_dns_label(namespace)
}

/// Whether `name` is an RFC 1123 label, as Kubernetes names rollouts and namespaces
/// ([`NAMESPACE_RULE`]).
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(document: &str) -> Vec<String> {
        match parse(document.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(ConfigErrors(errors)) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn minimal_config_gets_the_defaults() {
        let compiled =
            parse(br#"{"version": 1, "rollouts": {"checkout": {"hosts": ["checkout"]}}}"#);
        let Ok(compiled) = compiled else {
            unreachable!("{compiled:?}")
        };
        assert_eq!(compiled.routing_header, "x-cohort-version");
        assert_eq!(compiled.force_header, "x-cohort-force");
        assert_eq!(compiled.force_token, None);
        assert_eq!(
            compiled.anonymous,
            Anonymous::Cookie {
                name: "cohort-id".into(),
                max_age_seconds: DEFAULT_ANONYMOUS_MAX_AGE_SECONDS
            }
        );
        let rollout = &compiled.rollouts[0];
        assert_eq!((rollout.salt.as_str(), rollout.weight_bp), ("checkout", 0));
        assert_eq!(rollout.namespace, "", "no namespace: plain Envoy");
        assert_eq!(
            (
                rollout.stable_version.as_str(),
                rollout.canary_version.as_str()
            ),
            ("stable", "canary")
        );
    }

    #[test]
    fn full_config_compiles() {
        let document = r#"{
            "version": 1, "routingHeader": "X-Route", "forceHeader": "x-force",
            "forceToken": "0123456789abcdef0123",
            "identity": [{"kind": "header", "name": "X-User-Id"}, {"kind": "cookie", "name": "uid"}],
            "anonymous": {"mode": "stable"},
            "events": ["checkout", "signup"],
            "someFutureField": {"ignored": true},
            "rollouts": {
                "cart": {"namespace": "shop", "hosts": ["cart", "*"], "weightBp": 2500, "salt": "s1",
                         "stableVersion": "v1", "canaryVersion": "v2",
                         "identity": [{"kind": "cookie", "name": "session"}],
                         "allowCohorts": [0, 99], "allowKeys": ["bob", "alice", "bob"]}
            }
        }"#;
        let compiled = parse(document.as_bytes());
        let Ok(compiled) = compiled else {
            unreachable!("{compiled:?}")
        };
        assert_eq!(compiled.routing_header, "x-route");
        assert_eq!(compiled.anonymous, Anonymous::Stable);
        let rollout = &compiled.rollouts[0];
        assert_eq!(rollout.namespace, "shop");
        assert_eq!(rollout.identity, vec![Identity::Cookie("session".into())]);
        assert_eq!(rollout.allow_cohorts, 1 | (1u128 << 99));
        assert_eq!(rollout.allow_keys, vec![b"alice".to_vec(), b"bob".to_vec()]);
        assert_eq!(
            rollout.hosts,
            vec![HostPattern::Name("cart".into()), HostPattern::Any]
        );
    }

    #[test]
    fn bad_configs_name_the_field_and_the_fix() {
        let table: &[(&str, &str)] = &[
            ("{not json", "(document): not valid JSON"),
            ("", "(document): not valid JSON"),
            (
                r#"{"rollouts": {}}"#,
                "version: missing; add \"version\": 1",
            ),
            ("[1]", "(document): expected an object, found a list"),
            (r#"{"version": "1"}"#, "version: expected a whole number"),
            (
                r#"{"version": 1, "identity": {}}"#,
                "identity: expected a list, found an object",
            ),
            (
                r#"{"version": 1, "identity": [{"kind": "header"}]}"#,
                "identity[0].name: missing",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"weightBp": 5}}}"#,
                "rollouts.a.hosts: missing",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": [1]}}}"#,
                "rollouts.a.hosts[0]: expected a string, found a number",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "weightBp": 2.5}}}"#,
                "rollouts.a.weightBp: expected a whole number",
            ),
            (
                r#"{"version": 1, "anonymous": {"maxAgeSeconds": "1"}}"#,
                "anonymous.maxAgeSeconds: expected a whole number",
            ),
            (
                r#"{"version": 2}"#,
                "version: unsupported config version 2; this filter reads version 1",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "weightBp": 20000}}}"#,
                "rollouts.a.weightBp: 20000 is out of range; use 0..=10000 basis points",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "weightBp": -1}}}"#,
                "rollouts.a.weightBp: expected a whole number from 0 to 4294967295",
            ),
            (
                r#"{"version": 1, "identity": [{"kind": "query", "name": "u"}]}"#,
                r#"identity[0].kind: unknown identity kind "query"; use "header" or "cookie""#,
            ),
            (
                r#"{"version": 1, "identity": [{"kind": "header", "name": "bad header"}]}"#,
                "identity[0].name:",
            ),
            (
                r#"{"version": 1, "routingHeader": "cookie"}"#,
                "routingHeader: \"cookie\" is reserved",
            ),
            (
                r#"{"version": 1, "forceHeader": "x-cohort-version"}"#,
                "forceHeader: must differ",
            ),
            (
                r#"{"version": 1, "forceToken": "short"}"#,
                "forceToken: must be at least 16",
            ),
            (
                r#"{"version": 1, "anonymous": {"mode": "random"}}"#,
                "anonymous.mode: unknown mode \"random\"",
            ),
            (
                r#"{"version": 1, "anonymous": {"maxAgeSeconds": 0}}"#,
                "anonymous.maxAgeSeconds: 0 is out of range",
            ),
            (
                r#"{"version": 1, "events": ["ok", "no spaces"]}"#,
                "events[1]: \"no spaces\" is not a valid event name",
            ),
            (
                r#"{"version": 1, "events": ["a", "a"]}"#,
                "events[1]: \"a\" is listed twice",
            ),
            (
                r#"{"version": 1, "rollouts": {"Bad_Name": {"hosts": ["a"]}}}"#,
                "rollouts.Bad_Name: rollout names",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": []}}}"#,
                "rollouts.a.hosts: is empty",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a:80"]}}}"#,
                "rollouts.a.hosts[0]: \"a:80\" is not a host name",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["x"]}, "b": {"hosts": ["x"]}}}"#,
                "rollouts.b.hosts[0]: host \"x\" is already claimed by rollout \"a\"",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "canaryVersion": "stable"}}}"#,
                "rollouts.a.canaryVersion: equals stableVersion",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "stableVersion": "v 1"}}}"#,
                "rollouts.a.stableVersion:",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "allowCohorts": [100]}}}"#,
                "rollouts.a.allowCohorts[0]: 100 is not a cohort",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "allowKeys": [""]}}}"#,
                "rollouts.a.allowKeys[0]: keys are",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "namespace": 7}}}"#,
                "rollouts.a.namespace: expected a string, found a number",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "namespace": "Shop_1"}}}"#,
                "rollouts.a.namespace: \"Shop_1\" is not a namespace name; use 1-63 characters",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "salt": ""}}}"#,
                "rollouts.a.salt: must be 1-256",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "identity": [{"kind": "jwt", "name": "sub"}]}}}"#,
                "rollouts.a.identity[0].kind: unknown identity kind",
            ),
        ];
        for (document, want) in table {
            let errors = errors_of(document);
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "config {document}\n wanted an error containing {want:?}\n got {errors:?}"
            );
        }
    }

    #[test]
    fn a_host_is_claimed_by_the_rollout_that_listed_it_last_before() {
        let errors = errors_of(
            r#"{"version": 1, "rollouts": {"c": {"hosts": ["x"]}, "b": {"hosts": ["y", "x"]},
                                           "a": {"hosts": ["x", "x"]}}}"#,
        );
        let claimed = "; each host belongs to one rollout";
        assert_eq!(
            errors,
            [
                format!(
                    "rollouts.a.hosts[1]: host \"x\" is already claimed by rollout \"a\"{claimed}"
                ),
                format!(
                    "rollouts.b.hosts[1]: host \"x\" is already claimed by rollout \"a\"{claimed}"
                ),
                format!(
                    "rollouts.c.hosts[0]: host \"x\" is already claimed by rollout \"b\"{claimed}"
                ),
            ]
        );
    }

    #[test]
    fn namespaces_are_kubernetes_names_or_absent() {
        let long = "n".repeat(63);
        let too_long = "n".repeat(64);
        let table: &[(Option<&str>, Result<&str, ()>)] = &[
            (None, Ok("")),
            (Some(""), Ok("")),
            (Some("shop"), Ok("shop")),
            (Some("team-a-2"), Ok("team-a-2")),
            (Some("0"), Ok("0")),
            (Some(&long), Ok(&long)),
            (Some(&too_long), Err(())),
            (Some("-shop"), Err(())),
            (Some("shop-"), Err(())),
            (Some("Shop"), Err(())),
            (Some("shop.prod"), Err(())),
            (Some("a\"}"), Err(())),
            (Some("a;.;b"), Err(())),
            (Some("a=.=b"), Err(())),
            (Some(" shop"), Err(())),
        ];
        for (namespace, expected) in table {
            let mut entry = serde_json::json!({"hosts": ["a"]});
            if let Some(namespace) = namespace {
                entry["namespace"] = serde_json::Value::from(*namespace);
            }
            let document = serde_json::json!({"version": 1, "rollouts": {"a": entry}});
            let got = parse(document.to_string().as_bytes());
            match (expected, got) {
                (Ok(want), Ok(compiled)) => assert_eq!(compiled.rollouts[0].namespace, *want),
                (Err(()), Err(ConfigErrors(errors))) => {
                    assert_eq!(errors.len(), 1, "{namespace:?}: {errors:?}");
                    assert_eq!(errors[0].field, "rollouts.a.namespace");
                    assert!(errors[0].problem.contains("omit it"), "{errors:?}");
                }
                (expected, got) => panic!("{namespace:?}: wanted {expected:?}, got {got:?}"),
            }
        }
        // Absent and empty read the same, and an empty namespace is not written back.
        let mut config = FilterConfig::new();
        config
            .rollouts
            .insert("a".into(), RolloutConfig::new(vec!["a".into()], 0));
        let json = serde_json::to_string(&config).unwrap_or_default();
        assert!(!json.contains("namespace"), "{json}");
        if let Some(rollout) = config.rollouts.get_mut("a") {
            rollout.namespace = "shop".into();
        }
        let json = serde_json::to_string(&config).unwrap_or_default();
        assert!(json.contains(r#""namespace":"shop""#), "{json}");
        assert_eq!(parse_wire(json.as_bytes()), Ok(config));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = errors_of(
            r#"{"version": 3, "events": ["a b"], "rollouts": {"a": {"hosts": [], "weightBp": 10001}}}"#,
        );
        assert_eq!(errors.len(), 4, "{errors:?}");
    }

    #[test]
    fn debug_output_never_shows_the_force_token() {
        let document = br#"{"version": 1, "forceToken": "0123456789abcdef-secret"}"#;
        let wire = parse_wire(document).unwrap();
        let compiled = validate(&wire).unwrap();
        for shown in [
            format!("{wire:?}"),
            format!("{compiled:?}"),
            format!("{wire:#?}"),
        ] {
            assert!(shown.contains("<redacted>"), "{shown}");
            assert!(
                !shown.contains("secret") && !shown.contains("0123456789"),
                "{shown}"
            );
        }
        assert!(!format!("{:?}", FilterConfig::new()).contains("<redacted>"));
    }

    #[test]
    fn serialized_configs_validate_and_round_trip() {
        let mut config = FilterConfig::new();
        config.rollouts.insert(
            "checkout".into(),
            RolloutConfig::new(vec!["checkout".into()], 500),
        );
        let json = serde_json::to_vec(&config).unwrap_or_default();
        assert_eq!(parse_wire(&json), Ok(config.clone()));
        assert!(validate(&config).is_ok());
    }
}
