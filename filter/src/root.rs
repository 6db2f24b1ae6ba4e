//! The config lifecycle: parse, validate, define metrics, swap. A rejected config is logged with
//! its fields, counted, and refused (`on_configure` returns false), so Envoy keeps the last good
//! config serving.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use cohort_core::config::{self, Compiled};

use crate::active::Active;
use crate::host;
use crate::metrics::{define_rollouts, RolloutMetrics, VmMetrics};
use crate::stream::Stream;

/// What outlives one plugin config in this VM. Envoy makes a new root context for every config
/// it pushes into a running VM, so this cannot live in [`Root`].
#[derive(Default)]
struct VmState {
    accepted_configs: u64,
    /// The served rollouts' weight gauges by (namespace, rollout), the series' tags, to zero
    /// those the next config does not serve.
    weight_gauges: Vec<(SeriesKey, Option<u32>)>,
}

thread_local! {
    static VM_STATE: RefCell<VmState> = RefCell::default();
}

/// The root context: one per plugin config per worker.
#[derive(Default)]
pub struct Root {
    active: Option<Rc<Active>>,
    vm: Option<VmMetrics>,
}

impl Root {
    fn vm_metrics(&mut self) -> VmMetrics {
        *self
            .vm
            .get_or_insert_with(|| VmMetrics::define(&mut host::define_metric))
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.vm_metrics();
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let vm = self.vm_metrics();
        let document = host::plugin_configuration().unwrap_or_default();
        let config = match config::parse(&document) {
            Ok(config) => config,
            Err(errors) => {
                host::increment(vm.rejected, 1);
                host::log(
                    LogLevel::Error,
                    &format!("cohort: config rejected, the previous one keeps serving: {errors}"),
                );
                return false;
            }
        };
        let metrics = define_rollouts(&config, &mut host::define_metric);
        let mut summary = String::new();
        for (rollout, ids) in config.rollouts.iter().zip(&metrics) {
            host::record(ids.weight_bp, u64::from(rollout.weight_bp));
            summary.push_str(&format!(" {}={}bp", rollout.name, rollout.weight_bp));
        }
        let accepted = VM_STATE.with_borrow_mut(|state| {
            let gauges = weight_gauges_by_series(&config, &metrics);
            for gauge in retired_gauges(&state.weight_gauges, &gauges) {
                host::record(gauge, 0);
            }
            state.weight_gauges = gauges;
            state.accepted_configs += 1;
            state.accepted_configs
        });
        host::record(vm.generation, accepted);
        host::log(
            LogLevel::Info,
            &format!("cohort: config {accepted} accepted:{summary}"),
        );
        self.active = Some(Rc::new(Active { config, metrics }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(
            host::Envoy,
            self.active.clone(),
            self.vm.unwrap_or_default(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A rollout's series: its namespace and name, the tags of its weight gauge.
type SeriesKey = (String, String);

/// Each rollout's weight gauge with its series, `metrics` being indexed like the rollouts.
fn weight_gauges_by_series(
    config: &Compiled,
    metrics: &[RolloutMetrics],
) -> Vec<(SeriesKey, Option<u32>)> {
    config
        .rollouts
        .iter()
        .zip(metrics)
        .map(|(r, ids)| ((r.namespace.clone(), r.name.clone()), ids.weight_bp))
        .collect()
}

/// The gauges of `previous` whose series `current` does not serve: rollouts that left, and
/// those whose tags changed (a new namespace is a new series, same rollout name or not). Keyed
/// by series, not id: Envoy gives every definition a fresh id, also for a name it knows, so a
/// served rollout's old id is the same series as its new one.
fn retired_gauges<'a>(
    previous: &'a [(SeriesKey, Option<u32>)],
    current: &'a [(SeriesKey, Option<u32>)],
) -> impl Iterator<Item = Option<u32>> + 'a {
    previous
        .iter()
        .filter(|(series, _)| !current.iter().any(|(served, _)| served == series))
        .map(|(_, gauge)| *gauge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::define_rollouts;

    type Gauges = Vec<(SeriesKey, Option<u32>)>;

    /// The weight gauges of each config in turn, with the metric name of every id. Ids are
    /// handed out as Envoy hands them out: a fresh one per definition, also for a known name.
    fn weight_gauges(documents: &[&str]) -> (Vec<Gauges>, Vec<String>) {
        let mut names = Vec::new();
        let mut define = |_, name: &str| {
            names.push(name.to_owned());
            u32::try_from(names.len() - 1).ok()
        };
        let gauges = documents
            .iter()
            .map(|rollouts| {
                let document = format!(r#"{{"version": 1, "rollouts": {rollouts}}}"#);
                let config = config::parse(document.as_bytes()).unwrap();
                weight_gauges_by_series(&config, &define_rollouts(&config, &mut define))
            })
            .collect();
        (gauges, names)
    }

    #[test]
    fn the_gauges_of_series_that_end_are_zeroed() {
        let web = r#""web": {"namespace": "shop", "hosts": ["web"], "weightBp": 500}"#;
        let api = r#""api": {"hosts": ["api"], "weightBp": 100}"#;
        // (config before, config after, how many gauges go to 0)
        let table = [
            (format!("{{{web}}}"), format!("{{{web}}}"), 0),
            (
                format!("{{{web}}}"),
                format!("{{{}}}", web.replace("500", "900")),
                0,
            ),
            (format!("{{{web}, {api}}}"), format!("{{{web}}}"), 1),
            (format!("{{{web}, {api}}}"), "{}".to_owned(), 2),
            (format!("{{{web}}}"), format!("{{{web}, {api}}}"), 0),
            (
                format!("{{{web}}}"),
                format!("{{{}}}", web.replace("\"shop\"", "\"billing\"")),
                1,
            ),
            (
                format!("{{{web}}}"),
                format!("{{{}}}", web.replace(r#""namespace": "shop", "#, "")),
                1,
            ),
            (
                format!("{{{web}}}"),
                format!("{{{}}}", web.replace("\"web\": ", "\"www\": ")),
                1,
            ),
        ];
        for (before, after, zeroed) in table {
            let (gauges, names) = weight_gauges(&[&before, &after]);
            let name = |id: Option<u32>| id.and_then(|id| names.get(id as usize));
            let served: Vec<_> = gauges[1].iter().map(|(_, id)| name(*id)).collect();
            let retired: Vec<_> = retired_gauges(&gauges[0], &gauges[1]).collect();
            assert_eq!(retired.len(), zeroed, "{before} -> {after}: {gauges:?}");
            // Zeroing an old id zeroes its series: never one the new config serves.
            for id in retired {
                assert!(id.is_some(), "{before} -> {after}");
                assert!(
                    !served.contains(&name(id)),
                    "{before} -> {after}: zeroes the served {:?}",
                    name(id)
                );
            }
        }
    }
}
