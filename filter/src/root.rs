//! The config lifecycle: parse, validate, define metrics, swap. A rejected config is logged with
//! its fields, counted, and refused (`on_configure` returns false), so Envoy keeps the last good
//! config serving.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use cohort_core::config::{self, Compiled};

use crate::host;
use crate::metrics::{define_rollouts, RolloutMetrics, VmMetrics};
use crate::stream::Stream;

/// A config in service, with its metric ids. Streams hold an `Rc` to the one they started with.
#[derive(Debug)]
pub struct Active {
    /// The validated config.
    pub config: Compiled,
    /// Metric ids, indexed like `config.rollouts`.
    pub metrics: Vec<RolloutMetrics>,
}

/// What outlives one plugin config in this VM. Envoy makes a new root context for every config
/// it pushes into a running VM, so this cannot live in [`Root`].
#[derive(Default)]
struct VmState {
    accepted_configs: u64,
    /// Each served rollout's name and weight gauge, to zero the gauges of rollouts that leave.
    weight_gauges: Vec<(String, Option<u32>)>,
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
            for (name, gauge) in &state.weight_gauges {
                if !config.rollouts.iter().any(|r| &r.name == name) {
                    // A rollout that left the config serves nobody any more.
                    host::record(*gauge, 0);
                }
            }
            state.weight_gauges = config
                .rollouts
                .iter()
                .zip(&metrics)
                .map(|(r, ids)| (r.name.clone(), ids.weight_bp))
                .collect();
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
            self.active.clone(),
            self.vm.unwrap_or_default(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
