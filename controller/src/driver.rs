//! One rollout cycle, the same for the in-cluster controller ([`crate::reconciler`]) and for
//! `cohort run` ([`crate::standalone`]). Each calls [`cycle`] once per analysis interval:
//!
//! 1. **start** from the status the [`StatusStore`] holds;
//! 2. **read what the [`Target`] serves**, when the store records after the push
//!    ([`Order::PushThenRecord`]): a predecessor that stopped between its push and its record
//!    left a transition live but unrecorded, and it is taken as done ([`adopt_unrecorded`]);
//! 3. **read the workload** (in the cluster, with `spec.workload`): the stable and canary
//!    Deployments, from which [`workload::before_plan`] moves the status (a new canary revision
//!    starts a run);
//! 4. **fetch samples** from the [`MetricSource`] and [`evaluate`](cohort_rollout::evaluate()) them, when the cycle's
//!    [`Sampling`] says so;
//! 5. **plan** the next status, weight, Events and requeue ([`plan`](cohort_rollout::plan())): pure, no I/O; with a
//!    workload, [`workload::after_plan`] holds a weight the canary cannot take yet and decides
//!    what to do to the Deployments (scale the canary, copy its template into stable), which is
//!    done before the push;
//! 6. **apply**: push the weight (with the force token) to the target, record the status, and
//!    publish the Events, in the [`Order`] the store declares.
//!
//! The cycle keeps nothing between calls: the store (status, and what was served but not yet
//! recorded) and the target (what it serves) do. What differs between the two drivers is what
//! they hand it: a Kubernetes status subresource with Events and a WasmPlugin, or a status file
//! with log lines and an Envoy ECDS file.

use cohort_core::config::FilterConfig;
use k8s_openapi::jiff::Timestamp;

use crate::source::{BoxFuture, MetricSource, SeriesRequest};
use crate::target::Target;
use crate::workload::Workload;
use crate::Error;
use cohort_rollout::compiled::FilterEntry;
use cohort_rollout::crd::{CanaryRolloutSpec, CanaryRolloutStatus, GateResult, GateSpec, Phase};
use cohort_rollout::evaluate::{evaluate_window, Evaluation};
use cohort_rollout::plan::{adopt_unrecorded, plan_compiled, Plan, PlanInput, PlannedEvent};
use cohort_rollout::routing::{self, Routing};
use cohort_rollout::sequential::{analysis_window, compiled_analysis_window};
use cohort_rollout::validate::compile;
use cohort_rollout::workload::{self, Observed};

/// Where a driver reads the time; tests fix it.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Which write comes first when a cycle changes what the filter serves. A process can stop
/// between the two; the order decides which of them the next process finds ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Push the weight, then record the status: the in-cluster controller, whose status is the
    /// source of truth everyone reads (`kubectl`, the CLI, a successor replica), so it never
    /// claims a weight the filter does not serve. A failed push leaves the status as it was
    /// (the store's [`StatusStore::failed`] says why). A failed record after a push is retried
    /// from the status that was pushed, which the store keeps ([`StatusStore::serving`]). A
    /// successor that finds the target ahead of the status adopts the transition (step 2).
    PushThenRecord,
    /// Record the status (a journal), then push: `cohort run`'s status file, which only it reads.
    /// A failed journal write stops the push. A run killed between the two resumes from the new
    /// step and pushes its weight again (the target's memory of its last push starts empty), so
    /// it never re-decides a step it left, which could serve a lower weight or undo a rollback.
    /// A failed push is retried from the recorded status until the target takes it.
    RecordThenPush,
}

/// When a cycle reads samples. Only the plan at a step of a live rollout uses them; the other
/// cycles decide without (abort, promote, the first step, a settled or invalid rollout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// Only when the plan will read them: the in-cluster controller, which reads for up to
    /// thousands of rollouts per interval.
    WhenPlanned,
    /// Every cycle of a rollout not settled yet, before its first step too: `cohort run`. Its
    /// Envoy-admin source turns counters into a window by differencing against an earlier scrape,
    /// so the first step's first analysis needs a scrape taken a cycle before it.
    EveryLiveCycle,
}

impl Sampling {
    /// Whether this cycle reads samples, at `status`.
    /// `valid` says whether `spec` compiled.
    fn reads(
        self,
        spec: &CanaryRolloutSpec,
        valid: bool,
        status: Option<&CanaryRolloutStatus>,
    ) -> bool {
        match self {
            Sampling::WhenPlanned => status.is_some_and(|status| {
                !spec.abort
                    && !spec.promote
                    && matches!(status.phase, Phase::Progressing | Phase::Paused)
                    && status.step_index.is_some()
                    && valid
            }),
            Sampling::EveryLiveCycle => !status.is_some_and(|status| status.phase.is_terminal()),
        }
    }
}

/// Where a cycle starts.
#[derive(Debug, Clone, Default)]
pub struct Start {
    /// The status to plan from (`None` for a rollout never cycled).
    pub status: Option<CanaryRolloutStatus>,
    /// Events planned with `status` and not published yet (it was served but not recorded).
    pub events: Vec<PlannedEvent>,
    /// Whether `status` is one this process served and has not recorded yet: it explains what the
    /// target serves, so no transition is adopted over it.
    pub remembered: bool,
}

/// Where a rollout's status lives, and who hears its Events: the Kubernetes status subresource
/// and Events, or `cohort run`'s memory, status file and log.
pub trait StatusStore: Send {
    /// Whether the push or the record comes first: see [`Order`].
    fn order(&self) -> Order;

    /// The status this cycle starts from.
    fn start(&mut self) -> Start;

    /// The cycle is about to serve `planned` (and then publish `events`). A
    /// [`Order::PushThenRecord`] store keeps them until [`StatusStore::record`] succeeds, so a
    /// cycle cut short after the push (an error, a timeout) is retried from them.
    fn serving(&mut self, _planned: &CanaryRolloutStatus, _events: &[PlannedEvent]) {}

    /// A [`Order::RecordThenPush`] store's journal: `status` recorded before the push, which
    /// happens only if this succeeds.
    fn journal<'a>(
        &'a mut self,
        status: &'a CanaryRolloutStatus,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.record(status)
    }

    /// Records `status` as the cycle's outcome.
    fn record<'a>(
        &'a mut self,
        status: &'a CanaryRolloutStatus,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Announces the cycle's Events, once its status is recorded (or journaled): `status` is
    /// where they left the rollout, for the notifications they make.
    fn publish<'a>(
        &'a mut self,
        status: &'a CanaryRolloutStatus,
        events: &'a [PlannedEvent],
    ) -> BoxFuture<'a, ()>;

    /// The cycle failed with `error` before its push took: nothing it planned is served. Says so
    /// where people look (a condition, an Event), or nothing; `Err` when that fails too.
    fn failed<'a>(&'a mut self, error: &'a Error) -> BoxFuture<'a, Result<(), Error>>;
}

/// One rollout as a cycle sees it.
pub struct Rollout<'a> {
    /// `metadata.namespace` (empty for a rollout file without one).
    pub namespace: &'a str,
    /// `metadata.name`: the filter's rollout key.
    pub name: &'a str,
    /// `metadata.generation`, recorded as `observedGeneration`.
    pub generation: Option<i64>,
    /// The spec as it is now: what the cycle plans from.
    pub spec: &'a CanaryRolloutSpec,
    /// The spec the filter entry is built from. The in-cluster controller builds it from `spec`;
    /// `cohort run` from the last version of its file that validated, so an abort still reaches
    /// Envoy after an edit broke the file.
    pub entry_spec: &'a CanaryRolloutSpec,
    /// Reads the force token the spec names (a Secret in the cluster, a file for `cohort run`);
    /// awaited once the plan is made, just before the push.
    pub force_token: BoxFuture<'a, Result<Option<String>, Error>>,
    /// This cycle's time.
    pub now: Timestamp,
}

/// Runs one cycle of `rollout`: see the module docs. Returns the plan that was served and
/// recorded; an error leaves the rollout as the store's [`Order`] says. A failure before the
/// push took (the target's, or the force token's) comes as [`Error::Push`].
pub async fn cycle<S: StatusStore>(
    rollout: Rollout<'_>,
    store: &mut S,
    source: &dyn MetricSource,
    sampling: Sampling,
    target: &dyn Target,
) -> Result<Plan, Error> {
    cycle_with_workload(rollout, None, store, source, sampling, target).await
}

/// [`cycle`], running the Deployments of `spec.workload` too when `workload` is given (the
/// in-cluster controller): they are read before the plan, which starts from the status
/// [`workload::before_plan`] makes of them; [`workload::after_plan`] then decides what of the
/// plan may be served and what to do to them, which is done before the push. A spec without
/// `workload` cycles exactly as [`cycle`].
pub async fn cycle_with_workload<S: StatusStore>(
    rollout: Rollout<'_>,
    workload: Option<&dyn Workload>,
    store: &mut S,
    source: &dyn MetricSource,
    sampling: Sampling,
    target: &dyn Target,
) -> Result<Plan, Error> {
    let (namespace, name, now) = (rollout.namespace, rollout.name, rollout.now);
    let order = store.order();
    let Start {
        mut status,
        mut events,
        remembered,
    } = store.start();

    // Checked once for the whole cycle. The entry comes from the spec when it compiled and is
    // the entry spec; otherwise it is built on its own, as a spec invalid elsewhere still has an
    // entry (an abort must reach the filter).
    let compiled = compile(rollout.spec, namespace, name);
    let built;
    let entry = match &compiled {
        Ok(compiled) if rollout.entry_spec == rollout.spec => Some(compiled.entry()),
        _ => {
            built = FilterEntry::build(rollout.entry_spec, namespace, name).ok();
            built.as_ref()
        }
    };

    // A store that records after the push can lag the target; a spec that cannot build the
    // entry cannot have been pushed, so it is not read for.
    if order == Order::PushThenRecord && entry.is_some() {
        let live_bp = match target.live_weight(namespace, name).await {
            Ok(live_bp) => live_bp,
            Err(error) => return fail(store, Error::push(error)).await,
        };
        let adopted = status.as_ref().filter(|_| !remembered).and_then(|status| {
            adopt_unrecorded(
                rollout.spec,
                compiled.as_ref(),
                status,
                live_bp,
                name,
                rollout.generation,
                now,
            )
        });
        if let Some(adopted) = adopted {
            tracing::info!(rollout = %name, namespace = %namespace, weight_bp = adopted.weight_bp, "the filter serves a weight the status does not record: taking it as done");
            events = adopted.events;
            status = Some(adopted.status);
        }
    }

    // What the target serves now, before the workload moves the status.
    let served_bp = status.as_ref().map_or(0, |status| status.weight_bp);
    let workload = match (workload, rollout.spec.workload.as_ref()) {
        (Some(workload), Some(spec)) => {
            let observed = workload.observe().await.unwrap_or_else(|error| {
                tracing::warn!(rollout = %name, namespace = %namespace, %error, "cannot read the workload");
                Observed {
                    unreadable: Some(error.to_string()),
                    ..Observed::default()
                }
            });
            let prepared =
                workload::before_plan(rollout.spec, spec, status.as_ref(), &observed, now);
            status = prepared.status;
            events.extend(prepared.events);
            Some((workload, spec, observed))
        }
        _ => None,
    };

    let evaluation = if sampling.reads(rollout.spec, compiled.is_ok(), status.as_ref()) {
        let (window, gates, max_durations) = match &compiled {
            Ok(compiled) => (
                compiled_analysis_window(compiled, status.as_ref(), now),
                compiled.gates(),
                compiled.sequential_max_durations(),
            ),
            // `cohort run` samples while its spec is invalid; the plan will not read them, so
            // no gate needs its compiled level or `maxDuration`.
            Err(_) => (
                analysis_window(rollout.spec, status.as_ref(), now),
                &rollout.spec.analysis.gates[..],
                &[][..],
            ),
        };
        let served = compiled.as_ref().ok().map(|compiled| compiled.served());
        let request = SeriesRequest::new(rollout.spec, served, namespace, name);
        Some(
            analyse(
                source,
                Gates {
                    gates,
                    max_durations,
                    min_samples: rollout.spec.analysis.min_samples,
                    previous: status.as_ref().map_or(&[][..], |status| &status.gates[..]),
                },
                &request,
                window,
            )
            .await,
        )
    } else {
        None
    };
    let (evaluation, routing) = evaluation.unzip();
    if let Some(mismatch) = routing.as_ref().and_then(Routing::mismatch_message) {
        tracing::warn!(rollout = %name, namespace = %namespace, "routing mismatch, holding: {mismatch}");
    }
    let input = PlanInput {
        rollout: name.to_owned(),
        generation: rollout.generation,
        evaluation,
        routing,
    };
    let plan = plan_compiled(
        rollout.spec,
        compiled.as_ref(),
        status.as_ref(),
        &input,
        now,
    );
    let plan = match workload {
        Some((workload, spec, mut observed)) => {
            let decide = |observed: &Observed| {
                workload::after_plan(
                    spec,
                    status.as_ref(),
                    served_bp,
                    plan.clone(),
                    observed,
                    now,
                )
            };
            let mut decision = decide(&observed);
            if decision.scales() {
                match workload.canary_autoscaled().await {
                    Ok(false) => {}
                    Ok(true) => {
                        observed.canary_autoscaled = true;
                        decision = decide(&observed);
                    }
                    Err(error) => return fail(store, error).await,
                }
            }
            // Only ever before a weight goes up or stays (never before a rollback's push).
            for action in &decision.actions {
                if let Err(error) = workload.act(action).await {
                    return fail(store, error).await;
                }
            }
            decision.plan
        }
        None => plan,
    };
    events.extend(plan.events.iter().cloned());

    store.serving(&plan.status, &events);
    let token = rollout.force_token.await;
    let push = match Push::of(entry, &plan, served_bp, token) {
        Ok(push) => push,
        Err(error) => return fail(store, Error::push(error)).await,
    };
    let pushes = match &push {
        Push::Entry(config) => !target.serves(name, config),
        Push::Withdraw => true,
        Push::Hold => false,
    };
    // The order each store needs (see `Order`), in one place.
    match order {
        Order::PushThenRecord => {
            if pushes {
                if let Err(error) = push.apply(target, name).await {
                    return fail(store, Error::push(error)).await;
                }
            }
            store.record(&plan.status).await?;
            store.publish(&plan.status, &events).await;
        }
        Order::RecordThenPush => {
            if pushes {
                store.journal(&plan.status).await?;
            }
            store.publish(&plan.status, &events).await;
            if pushes {
                if let Err(error) = push.apply(target, name).await {
                    return fail(store, Error::push(error)).await;
                }
            }
            store.record(&plan.status).await?;
        }
    }
    Ok(plan)
}

/// Tells the store, then returns `error` (or the store's own failure to say so).
async fn fail<S: StatusStore>(store: &mut S, error: Error) -> Result<Plan, Error> {
    store.failed(&error).await?;
    Err(error)
}

/// What the cycle writes to the target.
enum Push {
    /// The rollout's entry at the plan's weight, with the force token.
    Entry(Box<FilterConfig>),
    /// The live entry set to 0: a rollback whose entry cannot be built.
    Withdraw,
    /// Nothing: a spec too broken to build the entry holds what is served (the plan says
    /// `InvalidSpec`).
    Hold,
}

impl Push {
    /// The push for `plan`, with `served_bp` the weight served before it. Only a rollback may
    /// go out without its entry: a Fail must reach the filter as weight 0 before anything else.
    /// `entry` is the rollout's filter entry, when its spec builds one.
    fn of(
        entry: Option<&FilterEntry>,
        plan: &Plan,
        served_bp: u32,
        force_token: Result<Option<String>, Error>,
    ) -> Result<Push, Error> {
        let rollback = plan.weight_bp == 0 && served_bp > 0;
        // Without the token the entry cannot be rebuilt; the withdrawal keeps the live one.
        let token = match force_token {
            Ok(token) => token,
            Err(_) if rollback => return Ok(Push::Withdraw),
            Err(error) => return Err(error),
        };
        Ok(match entry.and_then(|entry| entry.at(plan.weight_bp)) {
            Some(mut config) => {
                config.force_token = token;
                Push::Entry(Box::new(config))
            }
            None if rollback => Push::Withdraw,
            None => Push::Hold,
        })
    }

    async fn apply(&self, target: &dyn Target, name: &str) -> Result<(), Error> {
        match self {
            Push::Entry(config) => target.apply(name, config).await,
            Push::Withdraw => target.withdraw(name).await,
            Push::Hold => Ok(()),
        }
    }
}

/// The gates as compiled: sequential gates at their share of the rollout's error budget, with
/// their `maxDuration`s.
struct Gates<'a> {
    gates: &'a [GateSpec],
    max_durations: &'a [Option<std::time::Duration>],
    min_samples: u64,
    /// The gates' results at the look before (`status.gates`).
    previous: &'a [GateResult],
}

/// Canary against stable over the analysis window: the last interval, or, when a gate is
/// sequential, everything since the step started (an anytime-valid test needs all of it).
/// `window` is the analysis window at this cycle; `max_durations` the gates' compiled
/// `maxDuration`s. The routing check reads the same window, also for a rollout without gates: a
/// canary its users never reach is no canary at any weight.
async fn analyse(
    source: &dyn MetricSource,
    gates: Gates<'_>,
    request: &SeriesRequest,
    window: std::time::Duration,
) -> (Evaluation, Routing) {
    let mut samples = source.samples(window, std::slice::from_ref(request)).await;
    // No entry: no series for this rollout at all, which the gates judge as no data.
    let samples = samples.remove(&request.key()).unwrap_or_default();
    let evaluation = evaluate_window(
        gates.gates,
        gates.max_durations,
        gates.min_samples,
        &samples,
        window,
        gates.previous,
    );
    (evaluation, routing::check(&samples))
}
