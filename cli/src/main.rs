//! `cohort`: the controller and its command-line tool. The `lab` feature (on by default) adds
//! `cohort lab`, `simulate` and `analyze`; the controller image is built without it.

mod cli;

use std::io::Write;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use cli::Gesture;
use cohort_core::bucket::{place, FULL_WEIGHT_BP};

#[derive(Parser)]
#[command(
    name = "cohort",
    version,
    about = "Per-user canary rollouts for Envoy and Istio"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Which version does each user get? Prints one JSON object per key.
    Bucket(BucketArgs),
    /// Prints the CanaryRollout CustomResourceDefinition (YAML), as committed in manifests/crd/.
    Crd,
    /// Shows rollouts: phase, step, weight, each gate's last numbers and verdict, time in step.
    Status(cli::StatusArgs),
    /// Sends every user to the canary now (sets spec.promote).
    Promote(cli::GestureArgs),
    /// Sends every user back to stable and stops (sets spec.abort).
    Abort(cli::GestureArgs),
    /// Holds the canary's weight; analysis goes on and a failing gate still rolls back.
    Pause(cli::GestureArgs),
    /// Lets a paused rollout advance again.
    Resume(cli::GestureArgs),
    /// Starts a rolled-back, aborted or promoted rollout again from its first step.
    Retry(cli::GestureArgs),
    /// Drives one CanaryRollout against a plain Envoy (ECDS file), without Kubernetes. Exits 0
    /// when promoted, 3 when rolled back or aborted.
    Run(cohort_controller::standalone::RunArgs),
    /// Takes a rollout's entry out of a plain Envoy's ECDS file, so all of its users are served
    /// stable (what deleting a CanaryRollout does in a cluster). Stop `cohort run` first.
    Release(cohort_controller::standalone::release::ReleaseArgs),
    /// Runs a whole rollout on this machine: real Envoy with the filter, a stable and a canary
    /// upstream, many users, live progress, an HTML report. Exits 0 when it ends as the
    /// scenario expects (healthy: promoted; errors, slow, business-drop: rolled back).
    #[cfg(feature = "lab")]
    Lab(cohort_lab::LabArgs),
    /// Runs a rollout's gates over past data in Prometheus: one verdict per analysis interval,
    /// to tune gates before trusting them.
    #[cfg(feature = "lab")]
    Analyze(cohort_lab::analyze::AnalyzeArgs),
    /// Runs the in-cluster controller: watches CanaryRollouts, pushes their weights to
    /// WasmPlugins, serves /metrics, /healthz and /readyz; one leader among replicas.
    Controller(cohort_controller::reconciler::ControllerArgs),
    /// Simulates canary traffic under chosen conditions and compares whole cohort rollouts (a
    /// CanaryRollout driven by the controller's plan) with threshold (Flagger-style, with its
    /// documented bounds and with bounds tuned on A/A runs to a false-rollback target) and
    /// Mann-Whitney (Kayenta-style) gates: false rollbacks, detection times.
    #[cfg(feature = "lab")]
    Simulate(cohort_lab::simulate::SimulateArgs),
}

#[derive(Args)]
struct BucketArgs {
    /// Bucketing salt (a rollout's salt defaults to its name).
    #[arg(long)]
    salt: String,
    /// Canary weight in basis points (500 = 5%).
    #[arg(long = "weight-bp", value_parser = clap::value_parser!(u32).range(0..=i64::from(FULL_WEIGHT_BP)))]
    weight_bp: u32,
    /// User keys, as the filter reads them from the identity header or cookie.
    #[arg(required = true)]
    keys: Vec<String>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Bucket(args) => {
            let mut out = std::io::stdout().lock();
            for key in &args.keys {
                writeln!(out, "{}", bucket_line(&args.salt, args.weight_bp, key))?;
            }
        }
        Command::Crd => print!("{}", cohort_rollout::crd_yaml()?),
        Command::Status(args) => block_on(cli::status(args))?,
        Command::Promote(args) => block_on(cli::gesture(Gesture::Promote, args))?,
        Command::Abort(args) => block_on(cli::gesture(Gesture::Abort, args))?,
        Command::Pause(args) => block_on(cli::gesture(Gesture::Pause, args))?,
        Command::Resume(args) => block_on(cli::gesture(Gesture::Resume, args))?,
        Command::Retry(args) => block_on(cli::gesture(Gesture::Retry, args))?,
        Command::Run(args) => std::process::exit(cohort_controller::standalone::main(&args)),
        Command::Release(args) => {
            std::process::exit(cohort_controller::standalone::release::main(&args))
        }
        #[cfg(feature = "lab")]
        Command::Lab(args) => std::process::exit(cohort_lab::main(&args)),
        #[cfg(feature = "lab")]
        Command::Analyze(args) => std::process::exit(cohort_lab::analyze::main(&args)),
        Command::Controller(args) => cohort_controller::reconciler::main(&args)?,
        #[cfg(feature = "lab")]
        Command::Simulate(args) => cohort_lab::simulate::main(&args)?,
    }
    Ok(())
}

/// Runs one of the CLI's Kubernetes calls to completion on a single-threaded runtime.
fn block_on<T, E>(call: impl std::future::Future<Output = Result<T, E>>) -> Result<T>
where
    anyhow::Error: From<E>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(call)?)
}

/// One output line of `cohort bucket`.
#[derive(serde::Serialize)]
struct BucketLine<'k> {
    key: &'k str,
    cohort: u8,
    bucket: u16,
    canary: bool,
}

/// Where `key` falls, computed by the same code the filter runs.
fn bucket_line(salt: &str, weight_bp: u32, key: &str) -> String {
    let placement = place(salt, key.as_bytes());
    let line = BucketLine {
        key,
        cohort: placement.cohort,
        bucket: placement.bucket,
        canary: placement.is_canary(weight_bp),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_lines_match_the_golden_vectors() {
        // alice → cohort 9, bucket 930 for salt "checkout" (core's golden vectors).
        let table = [
            (
                930,
                r#"{"key":"alice","cohort":9,"bucket":930,"canary":false}"#,
            ),
            (
                931,
                r#"{"key":"alice","cohort":9,"bucket":930,"canary":true}"#,
            ),
        ];
        for (weight_bp, want) in table {
            assert_eq!(bucket_line("checkout", weight_bp, "alice"), want);
        }
    }
}
