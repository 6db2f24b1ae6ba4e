//! The Istio target: one rollout's entry in a WasmPlugin's `spec.pluginConfig`, written by
//! server-side apply.
//!
//! Each CanaryRollout applies with its own field manager ([`field_manager`]), and applies only
//! what it determines: `pluginConfig.version`, `.anonymous`, `.events` (when its gates count
//! business events), `.forceToken` (when the spec names a Secret holding one) and
//! `.rollouts.<name>`. `pluginConfig` is `x-kubernetes-preserve-unknown-fields`,
//! so the API server merges its maps key by key and treats lists as atomic: rollouts sharing a
//! WasmPlugin own disjoint `rollouts.<name>` keys, and co-own the filter-wide fields as long as
//! they apply equal values. Top-level `identity` is not applied: a rollout's identity sources
//! live in its own entry, so the WasmPlugin's author keeps the filter-wide default.
//!
//! Applies are never forced. A conflict means another manager (another rollout, or a person's
//! manifest) owns one of these fields with a different value; forcing would take it over and
//! silently change the filter for everyone sharing it. Instead the conflict surfaces as
//! [`Error::TargetConflict`] (a condition and an Event on the CanaryRollout) and is retried.
//!
//! Before applying, the WasmPlugin is read, our fields merged into its live `pluginConfig` the
//! way the API server will merge them, and the result checked by the filter's own
//! `cohort_core::config::parse`: a config the filter would reject is never pushed. Nor is an
//! entry over a same-named rollout's of another namespace (entries are keyed by name and record
//! their namespace): that is a [`Error::TargetConflict`] naming the rollout that holds it. When
//! the live config already is what the apply would make it ([`already_served`]), nothing is
//! written.
//!
//! Releasing ([`WasmPluginTarget::release`], when the CanaryRollout is deleted) is an apply with
//! the same field manager that omits what it applied before: the API server then removes every
//! field this manager owned and no other manager owns (the Kubernetes server-side apply rule for
//! a field dropped from an applied configuration), so `rollouts.<name>` goes, and the filter-wide
//! fields stay exactly while another rollout (or the WasmPlugin's author) still holds them. One
//! exception: `version` is kept when no other manager owns it, because a config without it is
//! refused by the filter, which would then keep serving the old config, entry included. The
//! release carries the `uid` and `resourceVersion` of the WasmPlugin it was computed from: a
//! change in between is a conflict (retried from a fresh read), and since the body has no
//! `spec.url` to stop it, the `uid` is what keeps an apply to a vanished WasmPlugin from creating
//! one (the API server refuses an apply naming a uid it cannot find; a `resourceVersion` alone
//! does not stop a create).

use std::sync::{Mutex, PoisonError};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::api::{Api, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Client;
use serde_json::{Map, Value};

use cohort_core::config::{
    self, ConfigError, ConfigErrors, FieldPath, FilterConfig, CONFIG_VERSION,
};

use super::{check_entry_namespace, entry_belongs_to, Released, Target};
use crate::source::BoxFuture;
use crate::Error;

/// WasmPlugin's API group (Istio 1.30 serves `v1alpha1` only).
pub const GROUP: &str = "extensions.istio.io";
/// WasmPlugin's served version.
pub const VERSION: &str = "v1alpha1";
/// The kind.
pub const KIND: &str = "WasmPlugin";
/// The resource's plural.
pub const PLURAL: &str = "wasmplugins";
/// The API server refuses longer field managers.
const MAX_FIELD_MANAGER: usize = 128;

/// The WasmPlugin API resource.
pub fn wasm_plugin_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// The field manager of one CanaryRollout: `cohort.dev/<namespace>.<name>`. Names that would
/// exceed the API server's 128 characters are cut and suffixed with a hash of the whole, so
/// every rollout keeps a manager of its own.
pub fn field_manager(namespace: &str, name: &str) -> String {
    let manager = format!("cohort.dev/{namespace}.{name}");
    if manager.len() <= MAX_FIELD_MANAGER {
        return manager;
    }
    let hash = format!(
        "-{:08x}",
        cohort_core::bucket::murmur3_32(manager.as_bytes())
    );
    let mut cut = MAX_FIELD_MANAGER - hash.len();
    while !manager.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{hash}", &manager[..cut])
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The live config already carried our fields: nothing was written.
    Unchanged,
    /// Our fields were applied.
    Applied,
}

/// One WasmPlugin, written on behalf of one CanaryRollout. Made for one reconcile: the live
/// config [`Target::live_weight`] reads is kept for that reconcile's write.
pub struct WasmPluginTarget {
    api: Api<DynamicObject>,
    resource: ApiResource,
    plugin: String,
    namespace: String,
    field_manager: String,
    /// The live `pluginConfig` read by [`Target::live_weight`]: the write that follows merges
    /// onto it, so a reconcile reads the WasmPlugin once. Taken by that write.
    last_read: Mutex<Option<Value>>,
}

impl WasmPluginTarget {
    /// The WasmPlugin `namespace/plugin`, written with `field_manager`.
    pub fn new(client: Client, namespace: &str, plugin: &str, field_manager: String) -> Self {
        let resource = wasm_plugin_resource();
        WasmPluginTarget {
            api: Api::namespaced_with(client, namespace, &resource),
            resource,
            plugin: plugin.to_owned(),
            namespace: namespace.to_owned(),
            field_manager,
            last_read: Mutex::new(None),
        }
    }

    /// The live config [`Target::live_weight`] read, if it did: taken, since a write makes it
    /// stale.
    fn take_live(&self) -> Option<Value> {
        self.last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Makes the live config serve rollout `name` as `config` describes it.
    pub async fn push(&self, name: &str, config: &FilterConfig) -> Result<Pushed, Error> {
        let applied = owned_fields(name, config)?;
        self.apply_owned(applied).await
    }

    /// Sets rollout `name`'s live entry to weight 0, keeping the rest of it: how an abort is
    /// served when the spec is too broken to build the entry from.
    pub async fn withdraw(&self, name: &str) -> Result<Pushed, Error> {
        let live = self.live_plugin_config().await?;
        let Some(applied) = withdrawn_fields(&live, name) else {
            return Ok(Pushed::Unchanged);
        };
        self.apply_checked(&live, applied).await
    }

    /// The live `spec.pluginConfig` (an empty object when it has none).
    pub async fn live(&self) -> Result<Value, Error> {
        self.live_plugin_config().await
    }

    /// [`WasmPluginTarget::push`] onto a live config read just before ([`WasmPluginTarget::live`]).
    pub async fn push_onto(
        &self,
        live: &Value,
        name: &str,
        config: &FilterConfig,
    ) -> Result<Pushed, Error> {
        let applied = owned_fields(name, config)?;
        self.apply_checked(live, applied).await
    }

    /// [`WasmPluginTarget::withdraw`] from a live config read just before.
    pub async fn withdraw_from(&self, live: &Value, name: &str) -> Result<Pushed, Error> {
        let Some(applied) = withdrawn_fields(live, name) else {
            return Ok(Pushed::Unchanged);
        };
        self.apply_checked(live, applied).await
    }

    /// Removes the entry of rollout `namespace/name` (and gives up every field only it held):
    /// what a deleted CanaryRollout leaves. A missing WasmPlugin serves no entry:
    /// [`Released::TargetMissing`]; an entry recording another namespace is a same-named
    /// rollout's, not this one's.
    pub async fn release(&self, namespace: &str, name: &str) -> Result<Released, Error> {
        let plugin = match self.api.get(&self.plugin).await {
            Ok(plugin) => plugin,
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                return Ok(Released::TargetMissing)
            }
            Err(error) => return Err(self.target_error(error)),
        };
        let Some(kept) = release_fields(&plugin, &self.field_manager, namespace, name) else {
            return Ok(Released::Nothing);
        };
        let live = plugin_config(&plugin);
        // A live config the filter refuses is not served anyway; otherwise what remains must
        // still be served, or the filter would keep the old config and this entry with it.
        if config::parse(&to_bytes(&live)?).is_ok() {
            config::parse(&to_bytes(&without_entry(&live, name))?)?;
        }
        let body = release_body(
            &self.resource,
            &self.namespace,
            &self.plugin,
            &plugin.metadata,
            kept,
        );
        let params = PatchParams::apply(&self.field_manager);
        let after = match self
            .api
            .patch(&self.plugin, &params, &Patch::Apply(&body))
            .await
        {
            Ok(after) => after,
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                return Ok(Released::TargetMissing)
            }
            // Nothing in a release can conflict on a value: the WasmPlugin changed or vanished
            // (the uid or the resourceVersion no longer match).
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                return Err(Error::TargetConflict(format!(
                    "{}: {}; it changed between the read and the release, which is retried \
                     from the new version",
                    self.describe(),
                    status.message
                )))
            }
            Err(error) => return Err(self.target_error(error)),
        };
        if own_entry(&plugin_config(&after), namespace, name).is_some() {
            let owners = other_owners_of_entry(&after, &self.field_manager, name);
            return Err(Error::TargetConflict(format!(
                "{} still has spec.pluginConfig.rollouts.{name} after the release: other field \
                 managers own part of it ({}); remove the entry by hand (kubectl edit \
                 wasmplugin -n {} {}): the CanaryRollout's deletion waits for it",
                self.describe(),
                if owners.is_empty() {
                    "not named in managedFields".to_owned()
                } else {
                    owners.join(", ")
                },
                self.namespace,
                self.plugin
            )));
        }
        Ok(Released::Removed)
    }

    async fn apply_owned(&self, applied: Value) -> Result<Pushed, Error> {
        let live = self.live_plugin_config().await?;
        self.apply_checked(&live, applied).await
    }

    async fn apply_checked(&self, live: &Value, applied: Value) -> Result<Pushed, Error> {
        if already_served(live, &applied) {
            return Ok(Pushed::Unchanged);
        }
        self.check_entry_namespaces(live, &applied)?;
        check_merged(live, &applied)?;
        let body = apply_body(&self.resource, &self.namespace, &self.plugin, applied);
        // No force: see the module documentation.
        let params = PatchParams::apply(&self.field_manager);
        self.api
            .patch(&self.plugin, &params, &Patch::Apply(&body))
            .await
            .map_err(|error| self.target_error(error))?;
        Ok(Pushed::Applied)
    }

    /// [`check_entry_namespace`] for each entry `applied` writes.
    fn check_entry_namespaces(&self, live: &Value, applied: &Value) -> Result<(), Error> {
        let namespace = |entry: &Value| {
            let namespace = entry.get("namespace").and_then(Value::as_str);
            namespace.unwrap_or_default().to_owned()
        };
        let written = applied.get("rollouts").and_then(Value::as_object);
        for (name, ours) in written.into_iter().flatten() {
            let existing = live.get("rollouts").and_then(|entries| entries.get(name));
            check_entry_namespace(
                &self.describe(),
                name,
                existing.map(namespace).as_deref(),
                &namespace(ours),
            )?;
        }
        Ok(())
    }

    /// The live `spec.pluginConfig` (an empty object when it has none).
    async fn live_plugin_config(&self) -> Result<Value, Error> {
        let plugin = self
            .api
            .get(&self.plugin)
            .await
            .map_err(|error| self.target_error(error))?;
        Ok(plugin_config(&plugin))
    }

    /// `WasmPlugin namespace/name`, for messages.
    pub fn describe(&self) -> String {
        format!("{KIND} {}/{}", self.namespace, self.plugin)
    }

    fn target_error(&self, error: kube::Error) -> Error {
        let plugin = self.describe();
        match error {
            kube::Error::Api(status) if status.is_not_found() => Error::TargetNotFound(plugin),
            kube::Error::Api(status) if status.is_conflict() => Error::TargetConflict(format!(
                "{plugin}: {}; another manager owns these fields with other values (rollouts \
                 sharing a {KIND} must agree on anonymous and the counted events, and no \
                 manifest may set this rollout's entry)",
                status.message
            )),
            other => Error::TargetUnavailable(format!("{plugin}: {other}")),
        }
    }
}

impl Target for WasmPluginTarget {
    fn apply<'a>(
        &'a self,
        name: &'a str,
        config: &'a FilterConfig,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            match self.take_live() {
                Some(live) => self.push_onto(&live, name, config).await,
                None => self.push(name, config).await,
            }
            .map(|_| ())
        })
    }

    fn release<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Released, Error>> {
        Box::pin(self.release(namespace, name))
    }

    fn live_weight<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u32>, Error>> {
        Box::pin(async move {
            let live = self.live().await?;
            let weight = live_weight(&live, namespace, name);
            *self
                .last_read
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(live);
            Ok(weight)
        })
    }

    fn withdraw<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            match self.take_live() {
                Some(live) => self.withdraw_from(&live, name).await,
                None => WasmPluginTarget::withdraw(self, name).await,
            }
            .map(|_| ())
        })
    }

    fn serves(&self, name: &str, config: &FilterConfig) -> bool {
        let live = self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        live.as_ref().is_some_and(|live| {
            owned_fields(name, config).is_ok_and(|applied| already_served(live, &applied))
        })
    }
}

/// A WasmPlugin's `spec.pluginConfig` (an empty object when it has none).
fn plugin_config(plugin: &DynamicObject) -> Value {
    plugin
        .data
        .pointer("/spec/pluginConfig")
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()))
}

fn entry_pointer(name: &str) -> String {
    format!("/rollouts/{}", name.replace('~', "~0").replace('/', "~1"))
}

/// The entry of rollout `namespace/name` in `config` ([`entry_belongs_to`]): `None` without one,
/// or when the entry of that name records another namespace.
fn own_entry<'c>(config: &'c Value, namespace: &str, name: &str) -> Option<&'c Value> {
    config.pointer(&entry_pointer(name)).filter(|entry| {
        let recorded = entry.get("namespace").and_then(Value::as_str);
        entry_belongs_to(recorded.unwrap_or_default(), namespace)
    })
}

/// `live` without rollout `name`'s entry.
pub fn without_entry(live: &Value, name: &str) -> Value {
    let mut rest = live.clone();
    if let Some(rollouts) = rest.get_mut("rollouts").and_then(Value::as_object_mut) {
        rollouts.remove(name);
    }
    rest
}

/// Whether `entry` is this manager's own apply (not another manager, nor an update that
/// happens to carry the same name).
fn is_own_apply(entry: &ManagedFieldsEntry, manager: &str) -> bool {
    entry.manager.as_deref() == Some(manager)
        && entry.operation.as_deref() == Some("Apply")
        && entry.subresource.as_deref().unwrap_or_default().is_empty()
}

/// The `fieldsV1` node at `path` (`f:` keys) of `entry`, if it owns that field or below it.
fn owned_node<'e>(entry: &'e ManagedFieldsEntry, path: &[&str]) -> Option<&'e Value> {
    path.iter()
        .try_fold(&entry.fields_v1.as_ref()?.0, |node, key| {
            node.get(format!("f:{key}"))
        })
}

/// What the release of rollout `namespace/name` applies with `manager`: `None` when the
/// WasmPlugin holds nothing of it (no entry of it, no field owned by that manager), else the
/// `pluginConfig` fields to keep applying, usually none. `version` is kept while no other
/// manager owns it: dropped, it would leave a config the filter refuses.
pub fn release_fields(
    plugin: &DynamicObject,
    manager: &str,
    namespace: &str,
    name: &str,
) -> Option<Map<String, Value>> {
    let live = plugin_config(plugin);
    let managed = plugin
        .metadata
        .managed_fields
        .as_deref()
        .unwrap_or_default();
    let holds_fields = managed.iter().any(|entry| is_own_apply(entry, manager));
    if own_entry(&live, namespace, name).is_none() && !holds_fields {
        return None;
    }
    let mut kept = Map::new();
    if let Some(version) = live.get("version") {
        let held_by_others = managed.iter().any(|entry| {
            !is_own_apply(entry, manager)
                && owned_node(entry, &["spec", "pluginConfig", "version"]).is_some()
        });
        if !held_by_others {
            kept.insert("version".to_owned(), version.clone());
        }
    }
    Some(kept)
}

/// The managers other than `manager` that own part of rollout `name`'s entry.
fn other_owners_of_entry(plugin: &DynamicObject, manager: &str, name: &str) -> Vec<String> {
    let managed = plugin
        .metadata
        .managed_fields
        .as_deref()
        .unwrap_or_default();
    let mut owners: Vec<String> = managed
        .iter()
        .filter(|entry| !is_own_apply(entry, manager))
        .filter(|entry| owned_node(entry, &["spec", "pluginConfig", "rollouts", name]).is_some())
        .filter_map(|entry| entry.manager.clone())
        .collect();
    owners.dedup();
    owners
}

/// The server-side apply body of a release: type, name, the `uid` and `resourceVersion` of the
/// WasmPlugin it was computed from (`read`), and `spec.pluginConfig` only when `kept` has
/// fields (an empty one would keep this manager owning `pluginConfig` itself).
pub fn release_body(
    resource: &ApiResource,
    namespace: &str,
    plugin: &str,
    read: &ObjectMeta,
    kept: Map<String, Value>,
) -> Value {
    let mut body = apply_body(resource, namespace, plugin, Value::Object(kept.clone()));
    if let Some(body) = body.as_object_mut() {
        if kept.is_empty() {
            body.remove("spec");
        }
        if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            for (key, value) in [
                ("uid", &read.uid),
                ("resourceVersion", &read.resource_version),
            ] {
                if let Some(value) = value {
                    metadata.insert(key.to_owned(), Value::from(value.as_str()));
                }
            }
        }
    }
    body
}

fn to_bytes(value: &Value) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value)
        .map_err(|error| Error::TargetUnavailable(format!("cannot serialize: {error}")))
}

/// The `pluginConfig` fields rollout `name` owns, from a config carrying that rollout.
pub fn owned_fields(name: &str, config: &FilterConfig) -> Result<Value, Error> {
    let entry = config.rollouts.get(name).ok_or_else(|| {
        Error::InvalidFilterConfig(ConfigErrors(vec![ConfigError {
            field: FieldPath::root().key("rollouts").key(name),
            problem: "missing from the config to push".to_owned(),
        }]))
    })?;
    let mut owned = Map::new();
    owned.insert("version".to_owned(), Value::from(config.version));
    owned.insert("anonymous".to_owned(), to_json(&config.anonymous)?);
    if let Some(token) = &config.force_token {
        owned.insert("forceToken".to_owned(), Value::from(token.as_str()));
    }
    if !config.events.is_empty() {
        owned.insert("events".to_owned(), to_json(&config.events)?);
    }
    let mut rollouts = Map::new();
    rollouts.insert(name.to_owned(), to_json(entry)?);
    owned.insert("rollouts".to_owned(), Value::Object(rollouts));
    Ok(Value::Object(owned))
}

/// The weight the live entry of rollout `namespace/name` serves (`None` without an entry of
/// it: a same-named rollout's of another namespace is not).
pub fn live_weight(live: &Value, namespace: &str, name: &str) -> Option<u32> {
    own_entry(live, namespace, name)
        .map(|entry| entry.get("weightBp").and_then(Value::as_u64).unwrap_or(0))
        .and_then(|weight| u32::try_from(weight).ok())
}

/// The fields to apply so that rollout `name`'s live entry serves weight 0; `None` when it has
/// no entry or is at 0 already. Carries the live filter-wide values, so applying it changes
/// nothing else (and drops no field this manager applied before).
pub fn withdrawn_fields(live: &Value, name: &str) -> Option<Value> {
    let mut entry = live.pointer(&format!("/rollouts/{name}"))?.clone();
    if entry.get("weightBp").and_then(Value::as_u64) == Some(0) {
        return None;
    }
    entry
        .as_object_mut()?
        .insert("weightBp".to_owned(), Value::from(0));
    let mut owned = Map::new();
    owned.insert("version".to_owned(), Value::from(CONFIG_VERSION));
    for shared in ["anonymous", "events", "forceToken"] {
        if let Some(value) = live.get(shared) {
            owned.insert(shared.to_owned(), value.clone());
        }
    }
    let mut rollouts = Map::new();
    rollouts.insert(name.to_owned(), entry);
    owned.insert("rollouts".to_owned(), Value::Object(rollouts));
    Some(Value::Object(owned))
}

/// `applied` merged into `live` as server-side apply merges a schemaless object: maps key by
/// key, anything else (lists included) replaced whole.
pub fn merge(live: &Value, applied: &Value) -> Value {
    match (live, applied) {
        (Value::Object(live), Value::Object(applied)) => {
            let mut merged = live.clone();
            for (key, value) in applied {
                let next = match live.get(key) {
                    Some(current) => merge(current, value),
                    None => value.clone(),
                };
                merged.insert(key.clone(), next);
            }
            Value::Object(merged)
        }
        (_, applied) => applied.clone(),
    }
}

/// Whether `live` already holds everything in `applied` (extra live keys are fine).
pub fn includes(live: &Value, applied: &Value) -> bool {
    match (live, applied) {
        (Value::Object(live), Value::Object(applied)) => applied.iter().all(|(key, value)| {
            live.get(key)
                .is_some_and(|current| includes(current, value))
        }),
        (live, applied) => live == applied,
    }
}

/// Filter-wide fields a rollout applies only when its spec asks for them.
const OPTIONAL_SHARED_FIELDS: [&str; 2] = ["events", "forceToken"];

/// Whether the live config already is what applying `applied` would make it, so the apply can
/// be skipped. Live values must include the applied ones, and beyond that: the entries applied
/// must be live exactly as applied, and a filter-wide field `applied` leaves out must be absent
/// live. A field this rollout applied before and no longer does (an `allowKeys`, the
/// `forceToken` of a Secret the spec stopped naming) goes only by an apply without it.
pub fn already_served(live: &Value, applied: &Value) -> bool {
    let entries_exact = applied
        .get("rollouts")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(name, entry)| live.pointer(&format!("/rollouts/{name}")) == Some(entry));
    let nothing_dropped = OPTIONAL_SHARED_FIELDS
        .iter()
        .all(|field| applied.get(field).is_some() || live.get(field).is_none());
    includes(live, applied) && entries_exact && nothing_dropped
}

/// The config the filter would get after the apply, checked by the filter's own parser.
pub fn check_merged(live: &Value, applied: &Value) -> Result<(), Error> {
    let merged = merge(live, applied);
    let document = serde_json::to_vec(&merged)
        .map_err(|error| Error::TargetUnavailable(format!("cannot serialize: {error}")))?;
    config::parse(&document)?;
    Ok(())
}

/// The server-side apply body: type, name, and `spec.pluginConfig` with only our fields.
/// The WasmPlugin schema requires `spec.url`, which we never send: should the WasmPlugin vanish
/// between our read and this apply, the apply cannot create a half WasmPlugin.
pub fn apply_body(resource: &ApiResource, namespace: &str, plugin: &str, owned: Value) -> Value {
    let mut spec = Map::new();
    spec.insert("pluginConfig".to_owned(), owned);
    let mut metadata = Map::new();
    metadata.insert("name".to_owned(), Value::from(plugin));
    metadata.insert("namespace".to_owned(), Value::from(namespace));
    let mut body = Map::new();
    body.insert(
        "apiVersion".to_owned(),
        Value::from(resource.api_version.as_str()),
    );
    body.insert("kind".to_owned(), Value::from(resource.kind.as_str()));
    body.insert("metadata".to_owned(), Value::Object(metadata));
    body.insert("spec".to_owned(), Value::Object(spec));
    Value::Object(body)
}

fn to_json(value: &impl serde::Serialize) -> Result<Value, Error> {
    serde_json::to_value(value)
        .map_err(|error| Error::TargetUnavailable(format!("cannot serialize: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_core::config::RolloutConfig;
    use serde_json::json;

    fn config_with(name: &str, hosts: &[&str], weight_bp: u32) -> FilterConfig {
        let mut config = FilterConfig::new();
        config.rollouts.insert(
            name.to_owned(),
            RolloutConfig::new(hosts.iter().map(|h| (*h).to_owned()).collect(), weight_bp),
        );
        config
    }

    #[test]
    fn owns_only_what_the_rollout_determines() {
        let mut config = config_with("checkout", &["checkout"], 500);
        let owned = owned_fields("checkout", &config).unwrap();
        assert_eq!(
            owned,
            json!({
                "version": 1,
                "anonymous": {"mode": "cookie", "cookieName": "cohort-id", "maxAgeSeconds": 2592000},
                "rollouts": {"checkout": {
                    "hosts": ["checkout"], "weightBp": 500,
                    "stableVersion": "stable", "canaryVersion": "canary"
                }}
            })
        );
        config.events = vec!["purchase".into()];
        let owned = owned_fields("checkout", &config).unwrap();
        assert_eq!(owned["events"], json!(["purchase"]));
        assert!(matches!(
            owned_fields("other", &config),
            Err(Error::InvalidFilterConfig(_))
        ));
    }

    #[test]
    fn merge_is_granular_for_maps_and_atomic_for_lists() {
        let live = json!({
            "version": 1, "routingHeader": "x-v", "events": ["a", "b"],
            "rollouts": {"search": {"hosts": ["search"], "weightBp": 100}}
        });
        let applied = json!({
            "version": 1, "events": ["c"],
            "rollouts": {"checkout": {"hosts": ["checkout"], "weightBp": 500}}
        });
        assert_eq!(
            merge(&live, &applied),
            json!({
                "version": 1, "routingHeader": "x-v", "events": ["c"],
                "rollouts": {
                    "search": {"hosts": ["search"], "weightBp": 100},
                    "checkout": {"hosts": ["checkout"], "weightBp": 500}
                }
            })
        );
    }

    #[test]
    fn includes_ignores_extra_live_fields_but_not_changed_ones() {
        let live =
            json!({"version": 1, "rollouts": {"checkout": {"weightBp": 500, "allowKeys": ["qa"]}}});
        assert!(includes(
            &live,
            &json!({"rollouts": {"checkout": {"weightBp": 500}}})
        ));
        assert!(!includes(
            &live,
            &json!({"rollouts": {"checkout": {"weightBp": 2500}}})
        ));
        assert!(!includes(
            &live,
            &json!({"rollouts": {"search": {"weightBp": 500}}})
        ));
        assert!(!includes(
            &json!({"events": ["a", "b"]}),
            &json!({"events": ["a"]})
        ));
    }

    #[test]
    fn an_apply_is_skipped_only_when_it_would_change_nothing() {
        let applied = json!({"version": 1, "forceToken": "t0ken-0123456789",
            "rollouts": {"checkout": {"weightBp": 500}}});
        let table = [
            // Another rollout's entry and fields the WasmPlugin's author set stay as they are.
            (
                json!({"version": 1, "forceToken": "t0ken-0123456789", "routingHeader": "x-v",
                    "rollouts": {"checkout": {"weightBp": 500}, "search": {"weightBp": 100}}}),
                true,
            ),
            (
                json!({"version": 1, "forceToken": "t0ken-0123456789",
                    "rollouts": {"checkout": {"weightBp": 2500}}}),
                false,
            ),
            // A field of the entry the spec no longer has.
            (
                json!({"version": 1, "forceToken": "t0ken-0123456789",
                    "rollouts": {"checkout": {"weightBp": 500, "allowKeys": ["qa"]}}}),
                false,
            ),
            (
                json!({"version": 1, "rollouts": {"checkout": {"weightBp": 500}}}),
                false,
            ),
        ];
        for (live, served) in table {
            assert_eq!(already_served(&live, &applied), served, "{live}");
        }
        // The spec stopped naming a token Secret: the live token goes only by an apply.
        let without_token = json!({"version": 1, "rollouts": {"checkout": {"weightBp": 500}}});
        let live = json!({"version": 1, "forceToken": "t0ken-0123456789", "events": ["c"],
            "rollouts": {"checkout": {"weightBp": 500}}});
        assert!(includes(&live, &without_token));
        assert!(!already_served(&live, &without_token));
    }

    #[test]
    fn merged_config_must_pass_the_filter() {
        let other =
            json!({"version": 1, "rollouts": {"search": {"hosts": ["shop"], "weightBp": 100}}});
        let ours = owned_fields("checkout", &config_with("checkout", &["checkout"], 500)).unwrap();
        check_merged(&other, &ours).unwrap();
        // An empty pluginConfig gets its version from us.
        check_merged(&json!({}), &ours).unwrap();
        // Two rollouts claiming one host: the filter would refuse the whole config.
        let clash = owned_fields("checkout", &config_with("checkout", &["shop"], 500)).unwrap();
        let Err(Error::InvalidFilterConfig(errors)) = check_merged(&other, &clash) else {
            panic!("a host claimed twice must not be pushed");
        };
        assert!(errors.to_string().contains("already claimed"), "{errors}");
    }

    #[test]
    fn withdrawing_keeps_the_entry_and_the_shared_fields() {
        let live = json!({
            "version": 1, "events": ["purchase"], "anonymous": {"mode": "stable"},
            "rollouts": {"checkout": {"hosts": ["checkout"], "weightBp": 500, "salt": "s"}}
        });
        assert_eq!(
            withdrawn_fields(&live, "checkout"),
            Some(json!({
                "version": 1, "events": ["purchase"], "anonymous": {"mode": "stable"},
                "rollouts": {"checkout": {"hosts": ["checkout"], "weightBp": 0, "salt": "s"}}
            }))
        );
        assert_eq!(withdrawn_fields(&live, "search"), None);
        let zero = json!({"rollouts": {"checkout": {"hosts": ["checkout"], "weightBp": 0}}});
        assert_eq!(withdrawn_fields(&zero, "checkout"), None);
    }

    #[test]
    fn field_managers_are_per_rollout_and_bounded() {
        assert_eq!(
            field_manager("shop", "checkout"),
            "cohort.dev/shop.checkout"
        );
        let long_namespace = "n".repeat(63);
        let a = field_manager(&long_namespace, &"a".repeat(63));
        let b = field_manager(&long_namespace, &format!("{}b", "a".repeat(62)));
        assert_eq!(a.len(), MAX_FIELD_MANAGER);
        assert_eq!(b.len(), MAX_FIELD_MANAGER);
        assert_ne!(
            a, b,
            "rollouts differing past the cut keep distinct managers"
        );
    }

    fn plugin(plugin_config: Value, managed: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": "cohort", "namespace": "shop", "resourceVersion": "7",
                         "managedFields": managed},
            "spec": {"url": "oci://example/cohort:1", "pluginConfig": plugin_config}
        }))
        .unwrap()
    }

    fn owns(manager: &str, operation: &str, plugin_config: Value) -> Value {
        json!({"manager": manager, "operation": operation, "fieldsType": "FieldsV1",
               "fieldsV1": {"f:spec": {"f:pluginConfig": plugin_config}}})
    }

    #[test]
    fn a_release_gives_up_everything_but_a_version_no_one_else_holds() {
        const OURS: &str = "cohort.dev/shop.checkout";
        let config = json!({"version": 1, "anonymous": {"mode": "stable"},
            "rollouts": {"checkout": {"hosts": ["checkout"], "weightBp": 500}}});
        let ours = owns(
            OURS,
            "Apply",
            json!({"f:version": {}, "f:anonymous": {"f:mode": {}},
                   "f:rollouts": {"f:checkout": {"f:hosts": {}, "f:weightBp": {}}}}),
        );
        // The WasmPlugin's author holds version: nothing is kept.
        let authored = plugin(
            config.clone(),
            json!([owns("kubectl", "Update", json!({"f:version": {}})), ours]),
        );
        assert_eq!(
            release_fields(&authored, OURS, "shop", "checkout"),
            Some(Map::new())
        );
        // No one else does: version stays applied, or the filter would refuse what is left.
        let alone = plugin(config.clone(), json!([ours]));
        let kept = release_fields(&alone, OURS, "shop", "checkout").unwrap();
        assert_eq!(Value::Object(kept), json!({"version": 1}));
        // Our name on an update is not our apply: it does not hold version for us.
        let updated = plugin(
            config.clone(),
            json!([owns(OURS, "Update", json!({"f:version": {}})), ours]),
        );
        assert_eq!(
            release_fields(&updated, OURS, "shop", "checkout"),
            Some(Map::new())
        );
        // Nothing of ours at all: nothing to apply.
        let other = plugin(json!({"version": 1, "rollouts": {}}), json!([]));
        assert_eq!(release_fields(&other, OURS, "shop", "checkout"), None);
        // Nor when the entry is a same-named rollout's of another namespace.
        let billing = plugin(
            json!({"version": 1, "rollouts": {"checkout": {"namespace": "billing",
                   "hosts": ["checkout"], "weightBp": 500}}}),
            json!([owns(
                "cohort.dev/billing.checkout",
                "Apply",
                json!({"f:version": {}})
            )]),
        );
        assert_eq!(release_fields(&billing, OURS, "shop", "checkout"), None);
        assert!(release_fields(
            &billing,
            "cohort.dev/billing.checkout",
            "billing",
            "checkout"
        )
        .is_some());
        // Nor is its weight this rollout's.
        let live = plugin_config(&billing);
        assert_eq!(live_weight(&live, "shop", "checkout"), None);
        assert_eq!(live_weight(&live, "billing", "checkout"), Some(500));
        // No entry, but fields we still hold: released too.
        let leftover = plugin(
            json!({"version": 1, "anonymous": {"mode": "stable"}}),
            json!([
                owns("kubectl", "Update", json!({"f:version": {}})),
                owns(
                    OURS,
                    "Apply",
                    json!({"f:version": {}, "f:anonymous": {"f:mode": {}}})
                )
            ]),
        );
        assert_eq!(
            release_fields(&leftover, OURS, "shop", "checkout"),
            Some(Map::new())
        );
    }

    #[test]
    fn a_release_body_names_the_plugin_read_and_has_no_empty_spec() {
        let resource = wasm_plugin_resource();
        let read = ObjectMeta {
            uid: Some("5f0c".into()),
            resource_version: Some("7".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(
            release_body(&resource, "shop", "cohort", &read, Map::new()),
            json!({
                "apiVersion": "extensions.istio.io/v1alpha1",
                "kind": "WasmPlugin",
                "metadata": {"name": "cohort", "namespace": "shop", "uid": "5f0c",
                             "resourceVersion": "7"}
            })
        );
        let mut kept = Map::new();
        kept.insert("version".to_owned(), json!(1));
        assert_eq!(
            release_body(&resource, "shop", "cohort", &read, kept)["spec"],
            json!({"pluginConfig": {"version": 1}})
        );
        let live = json!({"version": 1, "rollouts": {"a": {"weightBp": 1}, "b": {"weightBp": 2}}});
        assert_eq!(
            without_entry(&live, "a"),
            json!({"version": 1, "rollouts": {"b": {"weightBp": 2}}})
        );
    }

    #[test]
    fn apply_body_names_the_plugin_and_carries_only_plugin_config() {
        let body = apply_body(
            &wasm_plugin_resource(),
            "shop",
            "cohort",
            json!({"version": 1}),
        );
        assert_eq!(
            body,
            json!({
                "apiVersion": "extensions.istio.io/v1alpha1",
                "kind": "WasmPlugin",
                "metadata": {"name": "cohort", "namespace": "shop"},
                "spec": {"pluginConfig": {"version": 1}}
            })
        );
    }
}
