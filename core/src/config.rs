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
use serde_json::{Map, Value};

use crate::sort::sort_by;

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
    /// The Kubernetes Service the rollout splits (the `destination_service_name` tag of
    /// `cohort_decisions_total`, as Istio names the service its own metrics count); the rollout
    /// name when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
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
            service: None,
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

/// One step of a [`FieldPath`]: an object key or a list index. `K` is `String` in a stored path
/// and `&str` in [`FieldPath::segments`]' borrowed view, where a slice pattern can match keys
/// against string literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<K = String> {
    /// An object key, e.g. `rollouts` or a rollout's name.
    Key(K),
    /// A list index, e.g. the `2` of `events[2]`.
    Index(usize),
}

/// Where in a config document a problem is, as the keys and indexes leading to it, so a caller
/// can tell which field it is without parsing text (a rollout's name may itself hold a dot).
///
/// It prints as a dotted path: `rollouts.checkout.weightBp`, `events[2]`, and `(document)` for
/// the whole document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The whole document.
    pub fn root() -> Self {
        Self::default()
    }

    /// This path's field `key`.
    #[must_use]
    pub fn key(&self, key: &str) -> Self {
        self.child(Segment::Key(key.to_owned()))
    }

    /// This path's list element `index`.
    #[must_use]
    pub fn index(&self, index: usize) -> Self {
        self.child(Segment::Index(index))
    }

    fn child(&self, segment: Segment) -> Self {
        let mut segments = Vec::with_capacity(self.0.len() + 1);
        segments.extend_from_slice(&self.0);
        segments.push(segment);
        Self(segments)
    }

    /// The segments, borrowed, for slice patterns such as `[Key("events"), Index(i)]`.
    pub fn segments(&self) -> Vec<Segment<&str>> {
        self.0
            .iter()
            .map(|segment| match segment {
                Segment::Key(key) => Segment::Key(key.as_str()),
                Segment::Index(index) => Segment::Index(*index),
            })
            .collect()
    }
}

/// The dotted form of `segments`, as [`FieldPath`] prints it below the root: keys joined by `.`,
/// indexes as `[i]`. For naming part of a path, e.g. what follows a rollout's name.
pub fn dotted<K: AsRef<str>>(segments: &[Segment<K>]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_dotted(&mut out, segments);
    out
}

fn write_dotted<K: AsRef<str>>(out: &mut impl fmt::Write, segments: &[Segment<K>]) -> fmt::Result {
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Key(key) if i == 0 => out.write_str(key.as_ref())?,
            Segment::Key(key) => write!(out, ".{}", key.as_ref())?,
            Segment::Index(index) => write!(out, "[{index}]")?,
        }
    }
    Ok(())
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(document)")
        } else {
            write_dotted(f, &self.0)
        }
    }
}

/// Compares the printed form, so tests and checks can name a path as it reads in a message.
impl PartialEq<&str> for FieldPath {
    fn eq(&self, other: &&str) -> bool {
        /// What is left of the expected text as the path prints; fails at the first difference.
        struct Rest<'a>(&'a str);
        impl fmt::Write for Rest<'_> {
            fn write_str(&mut self, printed: &str) -> fmt::Result {
                self.0 = self.0.strip_prefix(printed).ok_or(fmt::Error)?;
                Ok(())
            }
        }
        let mut rest = Rest(other);
        fmt::write(&mut rest, format_args!("{self}")).is_ok() && rest.0.is_empty()
    }
}

/// One problem with a config: the field and what is wrong with how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the problem is; prints as a dotted path, e.g. `rollouts.checkout.weightBp`.
    pub field: FieldPath,
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
    /// Namespace of its CanaryRollout (the `cohort_namespace` and `destination_service_namespace`
    /// metric tags); may be empty.
    pub namespace: String,
    /// The Service it splits (the `destination_service_name` metric tag): the entry's `service`,
    /// else the rollout name.
    pub service: String,
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
    // serde_json refuses nesting past 128 levels (its recursion limit), so a hostile document
    // cannot exhaust the stack; the reading below never recurses into what it does not know.
    let value = serde_json::from_slice::<Value>(document).map_err(|error| {
        ConfigErrors(vec![ConfigError {
            field: FieldPath::root(),
            problem: format!("not valid JSON ({error}); the config must be one JSON object"),
        }])
    })?;
    let mut r = Reader::default();
    let top = FieldPath::root();
    let Some(root) = r.object(&value, &top) else {
        return Err(ConfigErrors(r.errors));
    };
    let version = match r.whole_number(root, &top, "version", u64::from(u32::MAX)) {
        Some(version) => version as u32,
        None => {
            if !root.contains_key("version") {
                r.error(
                    &top.key("version"),
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
            .string(root, &top, "routingHeader")
            .unwrap_or(defaults.routing_header),
        force_header: r
            .string(root, &top, "forceHeader")
            .unwrap_or(defaults.force_header),
        force_token: r.string(root, &top, "forceToken"),
        identity: r
            .list(root, &top, "identity", identity_source)
            .unwrap_or_default(),
        anonymous: root
            .get("anonymous")
            .map_or_else(AnonymousPolicy::default, |value| {
                anonymous_policy(&mut r, value)
            }),
        events_header: r
            .string(root, &top, "eventsHeader")
            .unwrap_or(defaults.events_header),
        events: r
            .list(root, &top, "events", Reader::string_item)
            .unwrap_or_default(),
        rollouts: match root.get("rollouts") {
            None => BTreeMap::new(),
            Some(value) => r
                .object(value, &top.key("rollouts"))
                .map(|rollouts| {
                    // Inserted one by one: `collect` into a map sorts, and brings its sort code.
                    let mut map = BTreeMap::new();
                    for (name, value) in rollouts {
                        if let Some(rollout) =
                            rollout_config(&mut r, value, &top.key("rollouts").key(name))
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

fn identity_source(r: &mut Reader, value: &Value, field: &FieldPath) -> Option<IdentitySource> {
    let object = r.object(value, field)?;
    let kind = r.string(object, field, "kind");
    let name = r.string(object, field, "name");
    for (key, present) in [("kind", kind.is_some()), ("name", name.is_some())] {
        if !present && !object.contains_key(key) {
            r.error(
                &field.key(key),
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
    let field = FieldPath::root().key("anonymous");
    let Some(object) = r.object(value, &field) else {
        return defaults;
    };
    AnonymousPolicy {
        mode: r.string(object, &field, "mode").unwrap_or(defaults.mode),
        cookie_name: r
            .string(object, &field, "cookieName")
            .unwrap_or(defaults.cookie_name),
        max_age_seconds: r
            .whole_number(object, &field, "maxAgeSeconds", u64::MAX)
            .unwrap_or(defaults.max_age_seconds),
    }
}

fn rollout_config(r: &mut Reader, value: &Value, field: &FieldPath) -> Option<RolloutConfig> {
    let object = r.object(value, field)?;
    let hosts = r.list(object, field, "hosts", Reader::string_item);
    if hosts.is_none() && !object.contains_key("hosts") {
        r.error(
            &field.key("hosts"),
            "missing; list the destination hosts this rollout splits".to_owned(),
        );
    }
    let mut rollout = RolloutConfig::new(hosts.unwrap_or_default(), 0);
    if let Some(namespace) = r.string(object, field, "namespace") {
        rollout.namespace = namespace;
    }
    rollout.service = r.string(object, field, "service");
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

/// Collects type errors while fields are read.
#[derive(Default)]
struct Reader {
    errors: Vec<ConfigError>,
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Reader {
    fn error(&mut self, field: &FieldPath, problem: String) {
        self.errors.push(ConfigError {
            field: field.clone(),
            problem,
        });
    }

    fn wrong_type(&mut self, field: &FieldPath, want: &str, got: &Value) {
        self.error(field, format!("expected {want}, found {}", kind(got)));
    }

    /// The value as an object.
    fn object<'v>(
        &mut self,
        value: &'v Value,
        field: &FieldPath,
    ) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(map) => Some(map),
            other => {
                self.wrong_type(field, "an object", other);
                None
            }
        }
    }

    /// An optional string field.
    fn string(
        &mut self,
        object: &Map<String, Value>,
        path: &FieldPath,
        key: &str,
    ) -> Option<String> {
        self.string_item(object.get(key)?, &path.key(key))
    }

    /// An optional whole-number field no larger than `max`.
    fn whole_number(
        &mut self,
        object: &Map<String, Value>,
        path: &FieldPath,
        key: &str,
        max: u64,
    ) -> Option<u64> {
        self.number_item(object.get(key)?, &path.key(key), max)
    }

    /// An optional list field, each element read by `item` with its own path.
    fn list<T>(
        &mut self,
        object: &Map<String, Value>,
        path: &FieldPath,
        key: &str,
        mut item: impl FnMut(&mut Self, &Value, &FieldPath) -> Option<T>,
    ) -> Option<Vec<T>> {
        let field = path.key(key);
        match object.get(key)? {
            Value::Array(values) => Some(
                values
                    .iter()
                    .enumerate()
                    .filter_map(|(i, value)| item(self, value, &field.index(i)))
                    .collect(),
            ),
            other => {
                self.wrong_type(&field, "a list", other);
                None
            }
        }
    }

    /// A value that must be a string.
    fn string_item(&mut self, value: &Value, field: &FieldPath) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.wrong_type(field, "a string", other);
                None
            }
        }
    }

    /// A value that must be a whole number no larger than `max`. Like `as_u64`, a number
    /// written with a fraction or exponent (`5.0`, `5e0`) is not whole.
    fn number_item(&mut self, value: &Value, field: &FieldPath, max: u64) -> Option<u64> {
        match value.as_u64() {
            Some(n) if n <= max => Some(n),
            _ => {
                self.error(field, format!("expected a whole number from 0 to {max}"));
                None
            }
        }
    }
}

/// Validates a wire config into its compiled form, reporting every problem found.
pub fn validate(config: &FilterConfig) -> Result<Compiled, ConfigErrors> {
    let mut errors = Errors::default();
    let top = FieldPath::root();

    if config.version != CONFIG_VERSION {
        errors.push(
            &top.key("version"),
            format!(
                "unsupported config version {}; this filter reads version {CONFIG_VERSION}",
                config.version
            ),
        );
    }
    let routing_header = errors.rewritten_header(
        &top.key("routingHeader"),
        &config.routing_header,
        "overwrites or removes this header on",
    );
    let force_header = errors.rewritten_header(
        &top.key("forceHeader"),
        &config.force_header,
        "removes this header from",
    );
    if routing_header.is_some() && routing_header == force_header {
        errors.push(
            &top.key("forceHeader"),
            "must differ from routingHeader; pick another header name".to_owned(),
        );
    }
    let force_token = config.force_token.as_deref().and_then(|token| {
        if token.len() < MIN_FORCE_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
            errors.push(
                &top.key("forceToken"),
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
    let rewritten = [
        ("routingHeader", routing_header.as_deref(), "overwrites"),
        ("forceHeader", force_header.as_deref(), "removes"),
    ];
    let identity = errors.identity(&top.key("identity"), &config.identity, &rewritten);
    let anonymous = errors.anonymous(&config.anonymous);
    let events_header = errors.header_name(&top.key("eventsHeader"), &config.events_header);
    errors.event_names(&config.events);

    let mut rollouts = Vec::with_capacity(config.rollouts.len());
    let mut clashes = host_clashes(&config.rollouts).into_iter();
    for (name, rollout) in &config.rollouts {
        let field = top.key("rollouts").key(name);
        if !is_dns_label(name) {
            errors.push(
                &field,
                "rollout names are 1-63 characters of a-z, 0-9 and '-', starting and ending \
                 with a letter or digit; rename the key"
                    .to_owned(),
            );
        }
        for i in 0..rollout.hosts.len() {
            if let Some(problem) = clashes.next().flatten() {
                errors.push(&field.key("hosts").index(i), problem);
            }
        }
        if let Some(compiled) = errors.rollout(&field, name, rollout, &identity, &rewritten) {
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

/// What a host pattern claims, `[name, namespace, cluster domain]`, `""` standing for any. The
/// forms `host_matches` (decide.rs) gives one service share its name and namespace, so two
/// patterns match a common host of two or more labels exactly when their names are equal and
/// their namespaces, and their domains, are equal or one is any. A one-label name takes the
/// rollout's namespace. Any other name (and `*`) matches only itself: it stands whole as the
/// name, which no one-label name can equal.
type ServiceKey<'a> = [&'a str; 3];

fn service_key<'a>(host: &'a str, namespace: &'a str) -> ServiceKey<'a> {
    let mut labels = host.split('.');
    match (labels.next(), labels.next(), labels.next()) {
        (Some(name), None, _) if host != "*" => [name, namespace, ""],
        (Some(name), Some(ns), None) => [name, ns, ""],
        (Some(name), Some(ns), Some("svc")) => {
            // `name.ns.svc.` is 6 bytes longer than its name and namespace.
            let domain = host.get(name.len() + ns.len() + 6..).unwrap_or("");
            [name, ns, domain]
        }
        _ => [host, "", ""],
    }
}

/// One host as a rollout lists it.
#[derive(Clone, Copy)]
struct Listing<'a> {
    rollout: &'a str,
    host: &'a str,
    namespace: &'a str,
    key: ServiceKey<'a>,
}

/// For each host of each rollout (in map order, then list order), why it clashes with one
/// listed before it, if it does: the first other rollout matching a host it matches (that one
/// gets the traffic: `find_rollout` takes the first), else the same host listed twice in its
/// own rollout. Other forms of one service in one rollout are let be: they route alike.
/// Pairwise: a config lists tens of hosts, and this runs once per config, not per request.
fn host_clashes(rollouts: &BTreeMap<String, RolloutConfig>) -> Vec<Option<String>> {
    let mut listings = Vec::new();
    for (name, rollout) in rollouts {
        let namespace = rollout.namespace.as_str();
        for host in &rollout.hosts {
            // An invalid host is refused on its own; it claims nothing.
            if host == "*" || is_host_name(host) {
                listings.push(Some(Listing {
                    rollout: name,
                    host,
                    namespace,
                    key: service_key(host, namespace),
                }));
            } else {
                listings.push(None);
            }
        }
    }
    listings
        .iter()
        .enumerate()
        .map(|(i, this)| {
            let this = this.as_ref()?;
            let earlier = || listings.get(..i).into_iter().flatten().flatten();
            let other = earlier()
                .find(|other| {
                    other.rollout != this.rollout && claims_overlap(&other.key, &this.key)
                })
                .or_else(|| {
                    earlier().find(|other| other.rollout == this.rollout && other.host == this.host)
                })?;
            Some(clash_problem(this, other))
        })
        .collect()
}

/// Whether two host patterns match a common host: the same name, and namespaces and domains
/// equal or one of them any.
fn claims_overlap(a: &ServiceKey<'_>, b: &ServiceKey<'_>) -> bool {
    let agree = |x: &str, y: &str| x == y || x.is_empty() || y.is_empty();
    a[0] == b[0] && agree(a[1], b[1]) && agree(a[2], b[2])
}

/// Names the listing `this` clashes with, one host the two share, and the fix.
fn clash_problem(this: &Listing<'_>, other: &Listing<'_>) -> String {
    let (host, rollout) = (this.host, other.rollout);
    let fix = "each host belongs to one rollout";
    if this.host == other.host && this.key == other.key {
        return format!("host \"{host}\" is already claimed by rollout \"{rollout}\"; {fix}");
    }
    let ([name, ns, domain], [_, other_ns, other_domain]) = (this.key, other.key);
    let ns = if ns.is_empty() { other_ns } else { ns };
    let domain = if domain.is_empty() {
        other_domain
    } else {
        domain
    };
    let dot = if domain.is_empty() { "" } else { "." };
    let scope = match (other.host.contains('.'), other.namespace) {
        (true, _) => String::new(),
        (false, "") => " in any namespace".to_owned(),
        (false, namespace) => format!(" in namespace \"{namespace}\""),
    };
    format!(
        "host \"{host}\" is already claimed by rollout \"{rollout}\" as \"{}\"{scope}: both \
         match {name}.{ns}.svc{dot}{domain}; {fix}, so list the service in one of them",
        other.host
    )
}

/// Headers a request needs as the client sent them. The routing header is overwritten or removed
/// and the force header removed on every request, so neither may be one of these (nor one of the
/// headers [`Errors::header_name`] refuses for any use).
const KEPT_REQUEST_HEADERS: [&str; 8] = [
    "authorization",
    "proxy-authorization",
    "content-type",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-connection",
];

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, field: &FieldPath, problem: String) {
        self.0.push(ConfigError {
            field: field.clone(),
            problem,
        });
    }

    fn header_name(&mut self, field: &FieldPath, name: &str) -> Option<String> {
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

    /// A request header the filter rewrites (`action`, e.g. "removes this header from") on
    /// every request it sees: besides [`Errors::header_name`]'s, none the request needs as sent.
    fn rewritten_header(&mut self, field: &FieldPath, name: &str, action: &str) -> Option<String> {
        let lower = self.header_name(field, name)?;
        if KEPT_REQUEST_HEADERS.contains(&lower.as_str()) {
            self.push(
                field,
                format!(
                    "\"{name}\" is reserved: the filter {action} every request, and the request \
                     needs it as sent; use a header of your own such as x-cohort-..."
                ),
            );
            return None;
        }
        Some(lower)
    }

    /// `rewritten`: (field, header, what the filter does to it) of the headers no user key may
    /// come from.
    fn identity(
        &mut self,
        field: &FieldPath,
        sources: &[IdentitySource],
        rewritten: &[(&str, Option<&str>, &str)],
    ) -> Vec<Identity> {
        let mut out = Vec::with_capacity(sources.len());
        for (i, source) in sources.iter().enumerate() {
            let field = field.index(i);
            match source.kind.as_str() {
                "header" => {
                    let Some(name) = self.header_name(&field.key("name"), &source.name) else {
                        continue;
                    };
                    match rewritten
                        .iter()
                        .find(|(_, header, _)| *header == Some(&name))
                    {
                        // Its value is the client's pick, and users without it look anonymous.
                        Some((other, _, action)) => self.push(
                            &field.key("name"),
                            format!(
                                "\"{}\" is the {other}, which the client sends and the filter \
                                 {action}; read the user key from another header, one your \
                                 authentication layer sets",
                                source.name
                            ),
                        ),
                        None => out.push(Identity::Header(name)),
                    }
                }
                "cookie" => {
                    if is_token(&source.name) {
                        out.push(Identity::Cookie(source.name.clone()));
                    } else {
                        self.push(
                            &field.key("name"),
                            format!(
                                "\"{}\" is not a valid cookie name; use letters, digits, '-' and '_'",
                                source.name
                            ),
                        );
                    }
                }
                other => self.push(
                    &field.key("kind"),
                    format!("unknown identity kind \"{other}\"; use \"header\" or \"cookie\""),
                ),
            }
        }
        out
    }

    fn anonymous(&mut self, policy: &AnonymousPolicy) -> Option<Anonymous> {
        let field = FieldPath::root().key("anonymous");
        match policy.mode.as_str() {
            "stable" => Some(Anonymous::Stable),
            "cookie" => {
                let mut ok = true;
                let name = &policy.cookie_name;
                // Browsers match these prefixes in any case and drop a Set-Cookie so named unless
                // it has Secure (and, for __Host-, Path=/ and no Domain). The filter's has no
                // Secure: it may serve plain http.
                let prefix = ["__Host-", "__Secure-"].into_iter().find(|prefix| {
                    name.get(..prefix.len())
                        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
                });
                if !is_token(name) {
                    self.push(
                        &field.key("cookieName"),
                        format!(
                            "\"{name}\" is not a valid cookie name; use letters, digits, '-' and '_'"
                        ),
                    );
                    ok = false;
                } else if let Some(prefix) = prefix {
                    self.push(
                        &field.key("cookieName"),
                        format!(
                            "\"{name}\" starts with {prefix}: browsers drop a Set-Cookie of that name \
                             without Secure, which this cookie lacks, so every request would get a \
                             new id and may switch version; use a name without the prefix"
                        ),
                    );
                    ok = false;
                }
                if policy.max_age_seconds == 0 || policy.max_age_seconds > MAX_COOKIE_AGE_SECONDS {
                    self.push(
                        &field.key("maxAgeSeconds"),
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
                    &field.key("mode"),
                    format!("unknown mode \"{other}\"; use \"cookie\" or \"stable\""),
                );
                None
            }
        }
    }

    fn event_names(&mut self, events: &[String]) {
        let field = FieldPath::root().key("events");
        if events.len() > MAX_EVENTS {
            self.push(
                &field,
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
                    &field.index(i),
                    format!("\"{event}\" is not a valid event name; use 1-64 characters of letters, digits, '_' and '-'"),
                );
            } else if events[..i].contains(event) {
                self.push(
                    &field.index(i),
                    format!("\"{event}\" is listed twice; remove the duplicate"),
                );
            }
        }
    }

    fn rollout(
        &mut self,
        field: &FieldPath,
        name: &str,
        rollout: &RolloutConfig,
        default_identity: &[Identity],
        rewritten: &[(&str, Option<&str>, &str)],
    ) -> Option<Rollout> {
        let before = self.0.len();
        if rollout.weight_bp > FULL_WEIGHT_BP {
            self.push(
                &field.key("weightBp"),
                format!(
                    "{} is out of range; use 0..={FULL_WEIGHT_BP} basis points (500 = 5%)",
                    rollout.weight_bp
                ),
            );
        }
        if rollout.hosts.is_empty() {
            self.push(
                &field.key("hosts"),
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
                    &field.key("hosts").index(i),
                    format!("\"{host}\" is not a host name; use lowercase DNS names without port or scheme, or \"*\""),
                );
            }
        }
        if !is_namespace(&rollout.namespace) {
            self.push(
                &field.key("namespace"),
                format!(
                    "\"{}\" is not a namespace name; use {NAMESPACE_RULE}, or omit it outside \
                     Kubernetes",
                    rollout.namespace
                ),
            );
        }
        let service = rollout.service.clone().unwrap_or_else(|| name.to_owned());
        // A metric tag value: a Kubernetes name cannot hold the `=.=` or `;.;` of the encoding.
        if rollout.service.is_some() && !is_dns_label(&service) {
            self.push(
                &field.key("service"),
                format!(
                    "\"{service}\" is not a service name; use {NAMESPACE_RULE}, or omit it to \
                     use the rollout name"
                ),
            );
        }
        let salt = rollout.salt.clone().unwrap_or_else(|| name.to_owned());
        if salt.is_empty() || salt.len() > 256 {
            self.push(
                &field.key("salt"),
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
                    &field.key(key),
                    format!("\"{version}\" is not a valid version name; use 1-63 characters of letters, digits, '-', '_' and '.'"),
                );
            }
        }
        if rollout.stable_version == rollout.canary_version {
            self.push(
                &field.key("canaryVersion"),
                "equals stableVersion; the two versions need different names".to_owned(),
            );
        }
        let identity = match &rollout.identity {
            Some(sources) => self.identity(&field.key("identity"), sources, rewritten),
            None => default_identity.to_vec(),
        };
        let mut allow_cohorts = 0u128;
        for (i, &cohort) in rollout.allow_cohorts.iter().enumerate() {
            if cohort < 100 {
                allow_cohorts |= 1u128 << cohort;
            } else {
                self.push(
                    &field.key("allowCohorts").index(i),
                    format!("{cohort} is not a cohort; cohorts are 0..=99"),
                );
            }
        }
        if rollout.allow_keys.len() > MAX_ALLOW_KEYS {
            self.push(
                &field.key("allowKeys"),
                format!(
                    "{} keys; at most {MAX_ALLOW_KEYS} (use allowCohorts for larger groups)",
                    rollout.allow_keys.len()
                ),
            );
        }
        for (i, key) in rollout.allow_keys.iter().enumerate() {
            if key.is_empty() || key.len() > MAX_KEY_BYTES {
                self.push(
                    &field.key("allowKeys").index(i),
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
            service,
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
        assert_eq!(rollout.service, "checkout", "no service: the rollout name");
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
                "cart": {"namespace": "shop", "service": "cart-svc", "hosts": ["cart", "*"],
                         "weightBp": 2500, "salt": "s1",
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
        assert_eq!(rollout.service, "cart-svc");
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
                r#"{"version": 1, "rollouts": {"a": {"namespace": "shop", "hosts": ["web"]},
                                               "b": {"hosts": ["web.shop"]}}}"#,
                "rollouts.b.hosts[0]: host \"web.shop\" is already claimed by rollout \"a\" as \"web\" \
                 in namespace \"shop\": both match web.shop.svc; each host belongs to one rollout",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"namespace": "shop", "hosts": ["web"]},
                                               "b": {"hosts": ["web.shop.svc.cluster.local"]}}}"#,
                "rollouts.b.hosts[0]: host \"web.shop.svc.cluster.local\" is already claimed by \
                 rollout \"a\" as \"web\" in namespace \"shop\": both match \
                 web.shop.svc.cluster.local;",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["web.shop.svc"]},
                                               "b": {"namespace": "billing", "hosts": ["web"]},
                                               "c": {"hosts": ["api", "web"]}}}"#,
                "rollouts.c.hosts[1]: host \"web\" is already claimed by rollout \"a\" as \
                 \"web.shop.svc\": both match web.shop.svc;",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["web"]},
                                               "b": {"namespace": "shop", "hosts": ["web"]}}}"#,
                "rollouts.b.hosts[0]: host \"web\" is already claimed by rollout \"a\" as \"web\" \
                 in any namespace: both match web.shop.svc;",
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
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "service": 7}}}"#,
                "rollouts.a.service: expected a string, found a number",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "service": ""}}}"#,
                "rollouts.a.service: \"\" is not a service name; use 1-63 characters",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "service": "web;.;x"}}}"#,
                "rollouts.a.service: \"web;.;x\" is not a service name; use 1-63 characters",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "service": "web=.=x"}}}"#,
                "rollouts.a.service: \"web=.=x\" is not a service name; use 1-63 characters",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "service": "Web"}}}"#,
                "rollouts.a.service: \"Web\" is not a service name; use 1-63 characters of a-z, \
                 0-9 and '-', starting and ending with a letter or digit, or omit it to use the \
                 rollout name",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "salt": ""}}}"#,
                "rollouts.a.salt: must be 1-256",
            ),
            (
                r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"], "identity": [{"kind": "jwt", "name": "sub"}]}}}"#,
                "rollouts.a.identity[0].kind: unknown identity kind",
            ),
            (
                r#"{"version": 1, "identity": [{"kind": "header", "name": "X-Cohort-Version"}]}"#,
                "identity[0].name: \"X-Cohort-Version\" is the routingHeader, which the client \
                 sends and the filter overwrites; read the user key from another header",
            ),
            (
                r#"{"version": 1, "forceHeader": "x-force",
                    "identity": [{"kind": "cookie", "name": "u"}, {"kind": "header", "name": "x-force"}]}"#,
                "identity[1].name: \"x-force\" is the forceHeader, which the client sends and the \
                 filter removes;",
            ),
            (
                r#"{"version": 1, "routingHeader": "x-route", "rollouts": {"a": {"hosts": ["a"],
                    "identity": [{"kind": "header", "name": "x-route"}]}}}"#,
                "rollouts.a.identity[0].name: \"x-route\" is the routingHeader",
            ),
            (
                r#"{"version": 1, "forceHeader": "Authorization"}"#,
                "forceHeader: \"Authorization\" is reserved: the filter removes this header from \
                 every request",
            ),
            (
                r#"{"version": 1, "routingHeader": "authorization"}"#,
                "routingHeader: \"authorization\" is reserved: the filter overwrites or removes",
            ),
            (
                r#"{"version": 1, "forceHeader": "te"}"#,
                "forceHeader: \"te\" is reserved",
            ),
            (
                r#"{"version": 1, "forceHeader": "upgrade"}"#,
                "forceHeader: \"upgrade\" is reserved",
            ),
            (
                r#"{"version": 1, "forceHeader": "keep-alive"}"#,
                "forceHeader: \"keep-alive\" is reserved",
            ),
            (
                r#"{"version": 1, "forceHeader": "proxy-connection"}"#,
                "forceHeader: \"proxy-connection\" is reserved",
            ),
            (
                r#"{"version": 1, "forceHeader": "Content-Type"}"#,
                "forceHeader: \"Content-Type\" is reserved",
            ),
            (
                r#"{"version": 1, "routingHeader": "upgrade"}"#,
                "routingHeader: \"upgrade\" is reserved",
            ),
            (
                r#"{"version": 1, "anonymous": {"cookieName": "__Host-cohort"}}"#,
                "anonymous.cookieName: \"__Host-cohort\" starts with __Host-: browsers drop a \
                 Set-Cookie of that name without Secure",
            ),
            (
                r#"{"version": 1, "anonymous": {"cookieName": "__secure-id"}}"#,
                "anonymous.cookieName: \"__secure-id\" starts with __Secure-",
            ),
        ];
        let mut failures = Vec::new();
        for (document, want) in table {
            let errors = errors_of(document);
            if !errors.iter().any(|e| e.contains(want)) {
                failures.push(format!(
                    "config {document}\n wanted an error containing {want:?}\n got {errors:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn a_host_is_claimed_by_the_first_rollout_that_lists_it() {
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
                    "rollouts.c.hosts[0]: host \"x\" is already claimed by rollout \"a\"{claimed}"
                ),
            ]
        );
    }

    #[test]
    fn rollouts_of_different_services_are_accepted() {
        let table = [
            // A mesh-wide WasmPlugin holding shop/checkout and billing/checkout.
            r#"{"shop-checkout": {"namespace": "shop", "hosts": ["checkout"]},
                "billing-checkout": {"namespace": "billing", "hosts": ["checkout"]}}"#,
            r#"{"a": {"namespace": "shop", "hosts": ["web"]}, "b": {"hosts": ["web.billing"]}}"#,
            r#"{"a": {"hosts": ["web.shop.svc.cluster.local"]},
                "b": {"hosts": ["web.shop.svc.corp.example"]}}"#,
            r#"{"a": {"hosts": ["web"]}, "b": {"hosts": ["web.example.com", "web.a.b"]}}"#,
            r#"{"a": {"hosts": ["*"]}, "b": {"hosts": ["web"]}}"#,
            // One rollout may name one service in several forms: its own traffic either way.
            r#"{"a": {"namespace": "shop", "hosts": ["web", "web.shop", "web.shop.svc.cluster.local"]}}"#,
            r#"{"a": {"namespace": "shop", "hosts": ["web.shop.svc.web", "web"]}}"#,
        ];
        for rollouts in table {
            let document = format!(r#"{{"version": 1, "rollouts": {rollouts}}}"#);
            assert_eq!(errors_of(&document), Vec::<String>::new(), "{rollouts}");
        }
    }

    /// Host patterns and rollout namespaces, and authorities of two or more labels made of the
    /// same names. A one-label authority is left out: Istio reads it in the caller's namespace,
    /// which the filter cannot see, so shop's and billing's `checkout` both match it by design.
    fn clash_fixtures() -> (Vec<(&'static str, &'static str)>, Vec<String>) {
        let patterns = vec![
            ("web", "shop"),
            ("web", "billing"),
            ("web", ""),
            ("web.shop", ""),
            ("web.shop", "billing"),
            ("web.billing", "shop"),
            ("web.shop.svc", ""),
            ("web.billing.svc", "shop"),
            ("web.shop.svc.cluster.local", ""),
            ("web.shop.svc.corp", "billing"),
            ("web.billing.svc.cluster.local", ""),
            ("web.io", ""),
            ("web.example.com", ""),
            ("web.shop.x", ""),
            ("web.shop.x.svc", ""),
            ("web.x.svc.y.z", "shop"),
            ("shop", "web"),
            ("svc", "shop"),
            ("api", "shop"),
            ("api.shop.svc", ""),
        ];
        let names = ["web", "api", "shop", "svc", "io", "x"];
        let namespaces = ["shop", "billing", "web", "io", "svc", "example", "x"];
        let domains = ["cluster.local", "corp", "y.z", "com"];
        let mut authorities = Vec::new();
        for name in names {
            for ns in namespaces {
                authorities.push(format!("{name}.{ns}"));
                authorities.push(format!("{name}.{ns}.svc"));
                for domain in domains {
                    authorities.push(format!("{name}.{ns}.svc.{domain}"));
                    authorities.push(format!("{name}.{ns}.{domain}"));
                }
            }
        }
        authorities.extend(patterns.iter().map(|(host, _)| host.to_string()));
        authorities.retain(|authority| authority.contains('.'));
        (patterns, authorities)
    }

    /// Which of `authorities` a rollout with this one host pattern matches.
    fn matched(host: &str, namespace: &str, authorities: &[String]) -> Vec<bool> {
        let document = serde_json::json!({"version": 1, "rollouts": {
            "r": {"namespace": namespace, "hosts": [host]}}});
        let compiled = parse(document.to_string().as_bytes());
        let Ok(compiled) = compiled else {
            unreachable!("{host} in {namespace:?}: {compiled:?}")
        };
        authorities
            .iter()
            .map(|authority| crate::decide::find_rollout(&compiled, authority.as_bytes()).is_some())
            .collect()
    }

    #[test]
    fn two_rollouts_clash_exactly_when_some_host_matches_both() {
        let (patterns, authorities) = clash_fixtures();
        let matches: Vec<Vec<bool>> = patterns
            .iter()
            .map(|(host, ns)| matched(host, ns, &authorities))
            .collect();
        for (p, (host_a, ns_a)) in patterns.iter().enumerate() {
            for (q, (host_b, ns_b)) in patterns.iter().enumerate() {
                let shared = authorities
                    .iter()
                    .zip(matches[p].iter().zip(&matches[q]))
                    .find(|(_, (a, b))| **a && **b)
                    .map(|(authority, _)| authority);
                let document = serde_json::json!({"version": 1, "rollouts": {
                    "a": {"namespace": ns_a, "hosts": [host_a]},
                    "b": {"namespace": ns_b, "hosts": [host_b]}}});
                let errors = errors_of(&document.to_string());
                let clash = errors
                    .iter()
                    .any(|e| e.starts_with("rollouts.b.hosts[0]: ") && e.contains("claimed"));
                assert_eq!(
                    clash,
                    shared.is_some(),
                    "a: {host_a} in {ns_a:?}, b: {host_b} in {ns_b:?}: shared {shared:?}, \
                     errors {errors:?}"
                );
                assert!(errors.len() <= 1, "{errors:?}");
            }
        }
    }

    #[test]
    fn every_clash_names_the_first_rollout_that_gets_its_traffic() {
        let (patterns, authorities) = clash_fixtures();
        let matches: Vec<Vec<bool>> = patterns
            .iter()
            .map(|(host, ns)| matched(host, ns, &authorities))
            .collect();
        let overlap =
            |p: usize, q: usize| matches[p].iter().zip(&matches[q]).any(|(a, b)| *a && *b);
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        let names = ["a", "b", "c", "d", "e"];
        for _ in 0..400 {
            // (rollout, namespace, its patterns), in name order.
            let mut rollouts = Vec::new();
            for name in &names[..2 + next(4)] {
                let ns = ["", "shop", "billing"][next(3)];
                let listed: Vec<usize> = (0..1 + next(3))
                    .map(|_| next(patterns.len()))
                    .filter(|&p| patterns[p].1 == ns || patterns[p].0.contains('.'))
                    .collect();
                if !listed.is_empty() {
                    rollouts.push((*name, ns, listed));
                }
            }
            let mut want = Vec::new();
            for (r, (name, _, listed)) in rollouts.iter().enumerate() {
                for (i, &p) in listed.iter().enumerate() {
                    let other = rollouts[..r]
                        .iter()
                        .find(|(_, _, earlier)| earlier.iter().any(|&q| overlap(p, q)))
                        .map(|(other, _, _)| *other)
                        .or_else(|| {
                            let host = patterns[p].0;
                            let twice = listed[..i].iter().any(|&q| patterns[q].0 == host);
                            twice.then_some(*name)
                        });
                    if let Some(other) = other {
                        want.push(format!("rollouts.{name}.hosts[{i}]: claimed by {other}"));
                    }
                }
            }
            let mut document = serde_json::json!({"version": 1, "rollouts": {}});
            for (name, ns, listed) in &rollouts {
                let hosts: Vec<&str> = listed.iter().map(|&p| patterns[p].0).collect();
                document["rollouts"][*name] = serde_json::json!({"namespace": ns, "hosts": hosts});
            }
            let got: Vec<String> = errors_of(&document.to_string())
                .iter()
                .map(|e| {
                    let (field, problem) = e.split_once(' ').unwrap_or_default();
                    let other = problem.split('"').nth(3).unwrap_or_default();
                    format!("{field} claimed by {other}")
                })
                .collect();
            assert_eq!(got, want, "{document}");
        }
    }

    /// Each error's path is its keys and indexes, whatever they hold (a rollout name with a
    /// dot stays one key), and prints as the dotted text the messages above show.
    #[test]
    fn error_paths_are_segments_that_print_dotted() {
        use Segment::{Index, Key};
        let document = r#"{"version": 1, "events": ["ok", "not ok"],
            "identity": [{"kind": "header", "name": "bad header"}],
            "rollouts": {"a.b": {"hosts": ["a"], "weightBp": 10001, "service": "a=.=b"}}}"#;
        let errors = match parse(document.as_bytes()) {
            Err(ConfigErrors(errors)) => errors,
            Ok(compiled) => unreachable!("{compiled:?}"),
        };
        let paths: Vec<(Vec<Segment<&str>>, String)> = errors
            .iter()
            .map(|e| (e.field.segments(), e.field.to_string()))
            .collect();
        assert_eq!(
            paths,
            vec![
                (
                    vec![Key("identity"), Index(0), Key("name")],
                    "identity[0].name".to_owned()
                ),
                (vec![Key("events"), Index(1)], "events[1]".to_owned()),
                (vec![Key("rollouts"), Key("a.b")], "rollouts.a.b".to_owned()),
                (
                    vec![Key("rollouts"), Key("a.b"), Key("weightBp")],
                    "rollouts.a.b.weightBp".to_owned()
                ),
                (
                    vec![Key("rollouts"), Key("a.b"), Key("service")],
                    "rollouts.a.b.service".to_owned()
                ),
            ]
        );
        let refused = parse(b"[]").map(|_| ()).unwrap_err().0;
        assert_eq!(refused[0].field, FieldPath::root());
        assert!(refused[0].field.segments().is_empty());
        assert_eq!(refused[0].field.to_string(), "(document)");

        let path = FieldPath::root()
            .key("rollouts")
            .key("a")
            .key("hosts")
            .index(3);
        assert_eq!(dotted(&path.segments()[2..]), "hosts[3]");
        assert_eq!(dotted(&path.segments()[3..]), "[3]");
        assert_eq!(dotted::<&str>(&[]), "");
        // Equal to its printed text only, not to a prefix, an extension or another spelling.
        assert!(path == "rollouts.a.hosts[3]");
        for other in [
            "rollouts.a.hosts",
            "rollouts.a.hosts[3]x",
            "rollouts.a.hosts.3",
            "",
        ] {
            assert!(path != other, "{other}");
        }
        assert!(FieldPath::root() == "(document)" && FieldPath::root() != "");
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
    fn json_errors_say_where() {
        let errors = errors_of("{\n  \"version\": 1,\n  \"b\" 2\n}");
        assert_eq!(
            errors,
            [
                "(document): not valid JSON (expected `:` at line 3 column 7); the config must be \
              one JSON object"
            ]
        );
    }

    #[test]
    fn json_that_is_not_json_is_refused_whole() {
        let documents: &[&[u8]] = &[
            b"",
            b"{\"version\": 1,}",
            b"{\"version\": 1} {}",
            b"{\"version\": 1, \"x\": \"\xff\"}",
            br#"{"version": 1, "x": "\ud800"}"#,
            br#"{"version": 1, "x": 1e400}"#,
            b"\xef\xbb\xbf{\"version\": 1}",
        ];
        for document in documents {
            let errors = match parse(document) {
                Ok(compiled) => unreachable!("{compiled:?}"),
                Err(ConfigErrors(errors)) => errors,
            };
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].field, "(document)");
            assert!(
                errors[0].problem.starts_with("not valid JSON ("),
                "{errors:?}"
            );
        }
    }

    /// serde_json's recursion limit: 128 levels of lists and objects are refused, 127 read.
    /// Hostile nesting is refused the same way, long before the stack could run out.
    #[test]
    fn nesting_past_the_recursion_limit_is_refused_without_a_panic() {
        let nested = |lists: usize| {
            format!(
                r#"{{"version": 1, "future": {}{}}}"#,
                "[".repeat(lists),
                "]".repeat(lists)
            )
        };
        assert_eq!(errors_of(&nested(126)), Vec::<String>::new());
        for document in [
            nested(127),
            "[".repeat(1_000_000),
            "{\"a\":".repeat(200_000),
        ] {
            let errors = errors_of(&document);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].starts_with("(document): not valid JSON (recursion limit exceeded"),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn unknown_fields_of_any_size_are_ignored() {
        let document = format!(
            r#"{{"version": 1, "huge": "{}", "many": [{}], "rollouts": {{"a": {{"hosts": ["a"],
                "future": {{"nested": [null, true, -1.5e-3]}}}}}}}}"#,
            "x".repeat(1 << 20),
            ["{}"; 100_000].join(",")
        );
        assert_eq!(errors_of(&document), Vec::<String>::new());
    }

    #[test]
    fn the_last_of_duplicate_keys_counts() {
        let compiled = parse(
            br#"{"version": 2, "rollouts": {"a": {"hosts": ["a"]}}, "version": 1,
                 "rollouts": {"b": {"hosts": ["b"], "weightBp": 1}, "b": {"hosts": ["b"], "weightBp": 2}}}"#,
        );
        let Ok(compiled) = compiled else {
            unreachable!("{compiled:?}")
        };
        let rollouts: Vec<(&str, u32)> = compiled
            .rollouts
            .iter()
            .map(|rollout| (rollout.name.as_str(), rollout.weight_bp))
            .collect();
        assert_eq!(rollouts, [("b", 2)]);
    }

    /// Whole numbers are those written without fraction or exponent, from 0 to `u64::MAX`.
    #[test]
    fn numbers_are_whole_only_as_written_so() {
        for weight in [
            "7.0",
            "7e0",
            "-7",
            "-0",
            "18446744073709551616",
            "\"7\"",
            "null",
        ] {
            let document = format!(
                r#"{{"version": 1, "rollouts": {{"a": {{"hosts": ["a"], "weightBp": {weight}}}}}}}"#
            );
            assert_eq!(
                errors_of(&document),
                ["rollouts.a.weightBp: expected a whole number from 0 to 4294967295"],
                "{weight}"
            );
        }
        let errors =
            errors_of(r#"{"version": 1, "anonymous": {"maxAgeSeconds": 18446744073709551615}}"#);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("anonymous.maxAgeSeconds: 18446744073709551615 is out of range"),
            "{errors:?}"
        );
    }

    #[test]
    fn strings_are_read_unescaped() {
        let compiled = parse(
            r#"{"version": 1, "rollouts": {"a": {"hosts": ["a"],
                 "allowKeys": ["a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00", "é"]}}}"#
                .as_bytes(),
        );
        let Ok(compiled) = compiled else {
            unreachable!("{compiled:?}")
        };
        assert_eq!(
            compiled.rollouts[0].allow_keys,
            ["a\"\\/\u{8}\u{c}\n\r\té😀".as_bytes(), "é".as_bytes()]
        );
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
