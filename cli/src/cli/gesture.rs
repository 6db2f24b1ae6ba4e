//! `cohort promote|abort|pause|resume|retry NAME`: each sets operator fields of one
//! CanaryRollout's spec with a JSON merge patch; the controller acts on them at its next
//! reconcile. The patch bodies and the report printed afterwards are pure functions.

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

use crate::cli::CliError;
use cohort_rollout::crd::{CanaryRollout, Phase};
use cohort_rollout::format::weight_percent;

/// The field manager the CLI's patches are recorded under.
pub const FIELD_MANAGER: &str = "cohort-cli";

/// What a person asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gesture {
    /// `spec.promote: true`: the canary serves everyone at once.
    Promote,
    /// `spec.abort: true`: everyone back to stable, and stop.
    Abort,
    /// `spec.paused: true`: hold the weight.
    Pause,
    /// `spec.paused: false`: carry on.
    Resume,
    /// Clear `abort` and `promote` and set `restartAt` to now: start again from the first step.
    Retry,
}

// Only the tests' failure messages name a gesture now that this is a binary's module.
#[cfg(test)]
impl Gesture {
    /// The verb, as typed on the command line.
    pub fn verb(self) -> &'static str {
        match self {
            Gesture::Promote => "promote",
            Gesture::Abort => "abort",
            Gesture::Pause => "pause",
            Gesture::Resume => "resume",
            Gesture::Retry => "retry",
        }
    }
}

/// The JSON merge patch for `gesture` at `now` (used only by retry, as `restartAt`, in RFC 3339
/// at whole seconds as Kubernetes writes times).
pub fn patch_body(gesture: Gesture, now: Timestamp) -> Value {
    let spec = match gesture {
        Gesture::Promote => json!({"promote": true}),
        Gesture::Abort => json!({"abort": true}),
        Gesture::Pause => json!({"paused": true}),
        Gesture::Resume => json!({"paused": false}),
        Gesture::Retry => json!({
            "abort": false,
            "promote": false,
            "restartAt": restart_at(now),
        }),
    };
    json!({"spec": spec})
}

/// `now` in RFC 3339 at whole seconds: `2027-01-15T08:00:00Z`.
pub fn restart_at(now: Timestamp) -> String {
    Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// What was done and what the controller will do with it, given the rollout as the API server
/// returned it after the patch (its status is the controller's last word).
pub fn report(gesture: Gesture, rollout: &CanaryRollout) -> String {
    let name = rollout.metadata.name.as_deref().unwrap_or_default();
    let namespace = rollout.metadata.namespace.as_deref().unwrap_or_default();
    let status = rollout.status.clone().unwrap_or_default();
    let phase = status.phase;
    let spec = &rollout.spec;
    let mut lines = vec![match gesture {
        Gesture::Promote => format!("{namespace}/{name}: set spec.promote=true"),
        Gesture::Abort => format!("{namespace}/{name}: set spec.abort=true"),
        Gesture::Pause => format!("{namespace}/{name}: set spec.paused=true"),
        Gesture::Resume => format!("{namespace}/{name}: set spec.paused=false"),
        Gesture::Retry => format!(
            "{namespace}/{name}: set spec.abort=false, spec.promote=false, spec.restartAt={}",
            spec.restart_at.as_deref().unwrap_or_default()
        ),
    }];
    let now_at = format!("it is {phase} at {}", weight_percent(status.weight_bp));
    let next = match gesture {
        Gesture::Promote if spec.abort => {
            "spec.abort is also set and wins: clear it with `cohort retry` first".to_owned()
        }
        Gesture::Promote if phase.is_terminal() => format!(
            "{now_at}; a {phase} rollout is left only by `cohort retry {name}`, so the promotion \
             waits for that"
        ),
        Gesture::Promote => {
            format!("{now_at}; the controller sends every user to the canary at its next pass")
        }
        Gesture::Abort => format!(
            "{now_at}; the controller sends every user to stable (weight 0) at its next pass and \
             stops; `cohort retry {name}` starts again from the first step"
        ),
        Gesture::Pause => format!(
            "{now_at}; the weight is held, analysis goes on and a failing gate still rolls back; \
             `cohort resume {name}` carries on"
        ),
        Gesture::Resume if phase == Phase::Paused => {
            format!("{now_at}; the controller carries on from this step at its next pass")
        }
        Gesture::Resume => format!("{now_at}; it was not paused, so nothing changes"),
        Gesture::Retry if phase.is_terminal() => {
            format!("{now_at}; the controller starts again from step 1 at its next pass")
        }
        Gesture::Retry => format!(
            "{now_at}; a retry restarts only Promoted, RolledBack or Aborted rollouts, so the \
             controller records it and carries on"
        ),
    };
    lines.push(format!("  {next}"));
    // Promote acts even on a paused rollout; a restarted one would sit paused at its first step.
    if spec.paused && gesture == Gesture::Retry {
        lines.push(format!(
            "  note: spec.paused is set; `cohort resume {name}` lets it advance"
        ));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Applies `gesture` to the rollout `namespace/name` and returns the report to print.
pub async fn run(
    client: Client,
    namespace: &str,
    name: &str,
    gesture: Gesture,
) -> Result<String, CliError> {
    let api: Api<CanaryRollout> = Api::namespaced(client, namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let body = patch_body(gesture, Timestamp::now());
    let patched = api
        .patch(name, &params, &Patch::Merge(&body))
        .await
        .map_err(|error| CliError::from_kube(error, namespace, name))?;
    Ok(report(gesture, &patched))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_rollout::crd::CanaryRolloutStatus;

    fn now() -> Timestamp {
        "2027-01-15T08:00:00.750Z".parse().unwrap()
    }

    #[test]
    fn patch_bodies_set_only_the_operator_fields() {
        let table = [
            (Gesture::Promote, json!({"spec": {"promote": true}})),
            (Gesture::Abort, json!({"spec": {"abort": true}})),
            (Gesture::Pause, json!({"spec": {"paused": true}})),
            (Gesture::Resume, json!({"spec": {"paused": false}})),
            (
                Gesture::Retry,
                json!({"spec": {
                    "abort": false,
                    "promote": false,
                    "restartAt": "2027-01-15T08:00:00Z"
                }}),
            ),
        ];
        for (gesture, body) in table {
            assert_eq!(patch_body(gesture, now()), body, "{}", gesture.verb());
        }
    }

    /// Applied to a rollout, each body reads back as the fields the planner looks at.
    #[test]
    fn patched_specs_read_as_the_planner_expects() {
        let base = json!({
            "apiVersion": "cohort.dev/v1alpha1", "kind": "CanaryRollout",
            "metadata": {"name": "checkout", "namespace": "shop"},
            "spec": {"target": {"wasmPlugin": {"name": "cohort"}}, "hosts": ["checkout"],
                     "abort": true, "promote": true, "paused": true}
        });
        let mut object = base.clone();
        merge(&mut object, &patch_body(Gesture::Retry, now()));
        let rollout: CanaryRollout = serde_json::from_value(object).unwrap();
        assert!(!rollout.spec.abort && !rollout.spec.promote && rollout.spec.paused);
        assert_eq!(
            rollout.spec.restart_at.as_deref(),
            Some("2027-01-15T08:00:00Z")
        );
        let mut object = base;
        merge(&mut object, &patch_body(Gesture::Resume, now()));
        let rollout: CanaryRollout = serde_json::from_value(object).unwrap();
        assert!(!rollout.spec.paused && rollout.spec.abort);
    }

    /// RFC 7386 JSON merge patch, as the API server applies it.
    fn merge(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(target), Value::Object(patch)) => {
                for (key, value) in patch {
                    if value.is_null() {
                        target.remove(key);
                    } else {
                        merge(target.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
            (target, patch) => *target = patch.clone(),
        }
    }

    fn rollout(phase: Phase, weight_bp: u32, spec: Value) -> CanaryRollout {
        let mut object = json!({
            "apiVersion": "cohort.dev/v1alpha1", "kind": "CanaryRollout",
            "metadata": {"name": "checkout", "namespace": "shop"},
            "spec": {"target": {"wasmPlugin": {"name": "cohort"}}, "hosts": ["checkout"]}
        });
        merge(&mut object, &json!({"spec": spec}));
        let mut rollout: CanaryRollout = serde_json::from_value(object).unwrap();
        rollout.status = Some(CanaryRolloutStatus {
            phase,
            weight_bp,
            ..CanaryRolloutStatus::default()
        });
        rollout
    }

    #[test]
    fn reports_say_what_was_set_and_what_happens_next() {
        let table = [
            (
                Gesture::Promote,
                rollout(Phase::Progressing, 500, json!({"promote": true})),
                "shop/checkout: set spec.promote=true\n  it is Progressing at 5%; the controller \
                 sends every user to the canary at its next pass\n",
            ),
            (
                Gesture::Promote,
                rollout(Phase::RolledBack, 0, json!({"promote": true})),
                "shop/checkout: set spec.promote=true\n  it is RolledBack at 0%; a RolledBack \
                 rollout is left only by `cohort retry checkout`, so the promotion waits for that\n",
            ),
            (
                Gesture::Promote,
                rollout(Phase::Aborted, 0, json!({"promote": true, "abort": true})),
                "shop/checkout: set spec.promote=true\n  spec.abort is also set and wins: clear \
                 it with `cohort retry` first\n",
            ),
            (
                Gesture::Abort,
                rollout(Phase::Progressing, 2500, json!({"abort": true})),
                "shop/checkout: set spec.abort=true\n  it is Progressing at 25%; the controller \
                 sends every user to stable (weight 0) at its next pass and stops; `cohort retry \
                 checkout` starts again from the first step\n",
            ),
            (
                Gesture::Pause,
                rollout(Phase::Progressing, 50, json!({"paused": true})),
                "shop/checkout: set spec.paused=true\n  it is Progressing at 0.5%; the weight is \
                 held, analysis goes on and a failing gate still rolls back; `cohort resume \
                 checkout` carries on\n",
            ),
            (
                Gesture::Resume,
                rollout(Phase::Paused, 2500, json!({})),
                "shop/checkout: set spec.paused=false\n  it is Paused at 25%; the controller \
                 carries on from this step at its next pass\n",
            ),
            (
                Gesture::Resume,
                rollout(Phase::Progressing, 2500, json!({})),
                "shop/checkout: set spec.paused=false\n  it is Progressing at 25%; it was not \
                 paused, so nothing changes\n",
            ),
            (
                Gesture::Retry,
                rollout(
                    Phase::RolledBack,
                    0,
                    json!({"restartAt": "2027-01-15T08:00:00Z", "paused": true}),
                ),
                "shop/checkout: set spec.abort=false, spec.promote=false, \
                 spec.restartAt=2027-01-15T08:00:00Z\n  it is RolledBack at 0%; the controller \
                 starts again from step 1 at its next pass\n  note: spec.paused is set; `cohort \
                 resume checkout` lets it advance\n",
            ),
            (
                Gesture::Retry,
                rollout(
                    Phase::Progressing,
                    500,
                    json!({"restartAt": "2027-01-15T08:00:00Z"}),
                ),
                "shop/checkout: set spec.abort=false, spec.promote=false, \
                 spec.restartAt=2027-01-15T08:00:00Z\n  it is Progressing at 5%; a retry \
                 restarts only Promoted, RolledBack or Aborted rollouts, so the controller \
                 records it and carries on\n",
            ),
        ];
        for (gesture, rollout, expected) in table {
            assert_eq!(report(gesture, &rollout), expected, "{}", gesture.verb());
        }
    }
}
