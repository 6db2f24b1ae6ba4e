//! Fault drill: `cohort run` killed mid-step and restarted from its status file, over and over,
//! at the worst moments: while reading metrics, and after the new weight reached the ECDS file
//! but before the cycle finished. Across every restart the served weight never goes down
//! except to 0 by a rollback, no step is entered twice, and none is skipped.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::*;
use crate::fixtures::Captured;
use crate::source::{BoxFuture, SamplesByRollout, SeriesRequest};
use cohort_rollout::evaluate::{Observed, Samples, VersionSamples};

const ROLLOUT: &str = r#"
apiVersion: cohort.dev/v1alpha1
kind: CanaryRollout
metadata: {name: web, namespace: shop}
spec:
  target: {envoyEcds: {path: /etc/envoy/ecds.yaml, filterName: cohort}}
  hosts: ["*"]
  steps: [{weight: 5, bake: 0s}, {weight: 10, bake: 0s}, {weight: 20, bake: 0s}, {weight: 35, bake: 0s},
          {weight: 50, bake: 0s}, {weight: 65, bake: 0s}, {weight: 80, bake: 0s}, {weight: 100}]
  analysis:
    interval: 2s
    minSamples: 10
    gates: [{errorRate: {maxIncrease: 0.02}}]
"#;

/// Samples on demand; hangs (as a slow Prometheus would) while `hang` is set.
struct Chaos {
    samples: Arc<Mutex<Samples>>,
    hang: Arc<AtomicBool>,
}

impl MetricSource for Chaos {
    fn samples<'a>(
        &'a self,
        _window: Duration,
        rollouts: &'a [SeriesRequest],
    ) -> BoxFuture<'a, SamplesByRollout> {
        if self.hang.load(Ordering::SeqCst) {
            return Box::pin(std::future::pending());
        }
        let samples = self.samples.lock().unwrap().clone();
        Box::pin(async move {
            rollouts
                .iter()
                .map(|r| (r.key(), samples.clone()))
                .collect()
        })
    }
}

/// A fake Envoy admin: `/stats` answers with an `update_success` that rises on every answer,
/// while `answers` is above 0 (or negative: always); otherwise it holds the request unanswered,
/// so a push hangs in its confirmation, after the file was written.
struct Admin {
    url: String,
    answers: Arc<AtomicI64>,
}

impl Admin {
    fn start() -> Admin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answers = Arc::new(AtomicI64::new(-1));
        let served = Arc::new(AtomicU64::new(0));
        let left = answers.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (left, served) = (left.clone(), served.clone());
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 4096];
                    let _ = stream.read(&mut buffer);
                    let answer = left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                            (n != 0).then_some(if n > 0 { n - 1 } else { n })
                        })
                        .is_ok();
                    if !answer {
                        // Unanswered until the client gives up.
                        std::thread::sleep(Duration::from_secs(30));
                        return;
                    }
                    let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                    let body = format!(
                        "extension_config_discovery.http_filter.cohort.update_success: {n}\n\
                         extension_config_discovery.http_filter.cohort.update_rejected: 0\n"
                    );
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Admin { url, answers }
    }
}

/// A clock the drill moves: three seconds per cycle, so every cycle sees a whole analysis
/// interval and a healthy one advances.
struct Ticking(AtomicI64);

impl Clock for Ticking {
    fn now(&self) -> Timestamp {
        let start = Timestamp::from_second(1_800_000_000).unwrap();
        start + SignedDuration::from_secs(self.0.load(Ordering::SeqCst))
    }
}

fn traffic(requests: f64, errors: f64) -> VersionSamples {
    VersionSamples {
        requests: Observed::Value(requests),
        server_errors: Observed::Value(errors),
        ..VersionSamples::default()
    }
}

/// The ECDS file's identity: every write (temp file + rename) makes a new inode.
fn inode(ecds: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(ecds).unwrap())
}

/// What the ECDS file serves for `web`.
fn served(ecds: &Path) -> u32 {
    EnvoyEcdsFile::new(ecds, "cohort")
        .read_config()
        .ok()
        .and_then(|config| config.rollouts.get("web").map(|r| r.weight_bp))
        .unwrap_or(0)
}

/// How a cycle ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// It runs to the end.
    None,
    /// Killed while reading the metrics.
    InAnalysis,
    /// Killed once the ECDS file was rewritten, before the cycle returns.
    AfterTheWrite,
}

/// A small deterministic generator (xorshift64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Drill {
    dir: PathBuf,
    ecds: PathBuf,
    status_file: PathBuf,
    samples: Arc<Mutex<Samples>>,
    hang: Arc<AtomicBool>,
    admin: Admin,
    clock: Arc<Ticking>,
}

impl Drill {
    fn new() -> Drill {
        let dir = std::env::temp_dir().join(format!(
            "cohort-kill-drill-{}-{}",
            std::process::id(),
            Timestamp::now().as_nanosecond()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ecds = dir.join("ecds.yaml");
        std::fs::write(
            &ecds,
            include_str!("../../../manifests/envoy/ecds.yaml")
                .replace("${WASM_PATH}", "/x.wasm")
                .replace(
                    "${COHORT_CONFIG}",
                    r#"{"version": 1, "rollouts": {"api": {"hosts": ["api"], "weightBp": 42}}}"#,
                ),
        )
        .unwrap();
        std::fs::write(dir.join("rollout.yaml"), ROLLOUT).unwrap();
        Drill {
            status_file: dir.join("status.json"),
            ecds,
            dir,
            samples: Arc::new(Mutex::new(Samples::default())),
            hang: Arc::new(AtomicBool::new(false)),
            admin: Admin::start(),
            clock: Arc::new(Ticking(AtomicI64::new(0))),
        }
    }

    /// A fresh `cohort run` process, as a restart would make it: status from the file.
    fn start(&self) -> Runner {
        let args = RunArgs {
            rollout: self.dir.join("rollout.yaml"),
            envoy_ecds: Some(self.ecds.clone()),
            envoy_admin: Some(self.admin.url.clone()),
            prometheus: None,
            status_file: Some(self.status_file.clone()),
            once: false,
        };
        let mut runner = Runner::new(&args).unwrap();
        runner.source = Box::new(Chaos {
            samples: self.samples.clone(),
            hang: self.hang.clone(),
        });
        runner.clock = self.clock.clone();
        runner
    }

    /// Runs one cycle of `runner`, killed as `kill` says; returns whether it was killed.
    async fn cycle(&self, runner: &mut Runner, kill: Kill) -> bool {
        self.clock.0.fetch_add(3, Ordering::SeqCst);
        let before = inode(&self.ecds);
        self.hang.store(kill == Kill::InAnalysis, Ordering::SeqCst);
        // Answer the "before" read of a push, then hold the confirmation.
        let answers = if kill == Kill::AfterTheWrite { 1 } else { -1 };
        self.admin.answers.store(answers, Ordering::SeqCst);
        let killed = {
            let cycle = runner.cycle();
            tokio::pin!(cycle);
            let mut waited = Duration::ZERO;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut cycle => break false,
                    () = tokio::time::sleep(Duration::from_millis(2)) => {
                        waited += Duration::from_millis(2);
                        let written = inode(&self.ecds) != before;
                        if (kill == Kill::AfterTheWrite && written)
                            || (kill == Kill::InAnalysis && waited >= Duration::from_millis(20))
                        {
                            break true;
                        }
                        assert!(waited < Duration::from_secs(20), "the cycle hung");
                    }
                }
            }
        };
        self.hang.store(false, Ordering::SeqCst);
        self.admin.answers.store(-1, Ordering::SeqCst);
        killed
    }
}

impl Drop for Drill {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn killed_mid_step_and_restarted_never_repeats_skips_or_goes_back() {
    let (mut after_write_kills, mut phases) = (0, Vec::new());
    for seed in [1u64, 2, 7, 42, 99, 1_000_003] {
        let mut rng = Rng(seed);
        let drill = Drill::new();
        let mut runner = drill.start();
        let mut weights = vec![served(&drill.ecds)];
        let (mut kills, mut cycles) = (0, 0);
        let fail_after = 4 + rng.below(10);
        loop {
            cycles += 1;
            assert!(cycles < 200, "seed {seed}: no end after 200 cycles");
            // Mostly healthy, often too thin to judge; late in the drill, sometimes failing.
            let healthy = Samples {
                canary: traffic(1_000.0, 1.0),
                stable: traffic(9_000.0, 9.0),
            };
            let thin = Samples {
                canary: traffic(3.0, 0.0),
                stable: traffic(9_000.0, 9.0),
            };
            let failing = Samples {
                canary: traffic(1_000.0, 200.0),
                stable: traffic(9_000.0, 9.0),
            };
            *drill.samples.lock().unwrap() = match rng.below(10) {
                _ if cycles > fail_after && seed % 2 == 0 => failing,
                0..=5 => healthy,
                _ => thin,
            };
            let kill = match rng.below(6) {
                0 => Kill::InAnalysis,
                1 | 2 => Kill::AfterTheWrite,
                _ => Kill::None,
            };
            let killed = drill.cycle(&mut runner, kill).await;
            weights.push(served(&drill.ecds));
            if killed {
                kills += 1;
                after_write_kills += usize::from(kill == Kill::AfterTheWrite);
                runner = drill.start();
                continue;
            }
            let status = runner.status().cloned().unwrap();
            if status.phase.is_terminal() {
                // What the file serves is what the status says; the drill ends.
                assert_eq!(served(&drill.ecds), status.weight_bp, "seed {seed}");
                check(seed, &weights, &status);
                phases.push(status.phase);
                eprintln!(
                    "seed {seed}: {:?} after {cycles} cycles and {kills} kills; served {weights:?}",
                    status.phase
                );
                break;
            }
        }
    }
    // The drill did what it claims: many kills right after a write, both endings.
    assert!(
        after_write_kills >= 10,
        "{after_write_kills} kills after a write"
    );
    assert!(phases.contains(&Phase::Promoted) && phases.contains(&Phase::RolledBack));
}

/// The invariants of one drill.
fn check(seed: u64, weights: &[u32], status: &CanaryRolloutStatus) {
    // The served weight never goes down, except to 0 at the end by a rollback.
    let rolled_back = status.phase == Phase::RolledBack;
    for pair in weights.windows(2) {
        let allowed = pair[1] >= pair[0] || (rolled_back && pair[1] == 0);
        assert!(allowed, "seed {seed}: the weight went back: {weights:?}");
    }
    // Every step entered once, in order, none skipped.
    let advances: Vec<(Option<u32>, Option<u32>)> = status
        .history
        .iter()
        .filter(|entry| entry.reason == "StepAdvanced")
        .map(|entry| (entry.from_step, entry.to_step))
        .collect();
    for (i, (from, to)) in advances.iter().enumerate() {
        let i = i as u32;
        assert_eq!(
            (*from, *to),
            (Some(i), Some(i + 1)),
            "seed {seed}: advances {advances:?}"
        );
    }
    if status.phase == Phase::Promoted {
        assert_eq!(weights.last(), Some(&10_000));
    }
}

/// `spec.forceTokenFile`: the token reaches the ECDS file, and neither the status file nor any
/// log line; a token file that cannot be used stops the run at start without showing it.
#[tokio::test]
async fn the_force_token_file_reaches_the_ecds_file_and_nothing_else() {
    const TOKEN: &str = "9c1f5e2a7b3d4f60a8e1c2d3";
    let drill = Drill::new();
    std::fs::write(drill.dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let with_token = ROLLOUT.replace(
        "  hosts: [\"*\"]\n",
        "  hosts: [\"*\"]\n  forceTokenFile: token\n",
    );
    std::fs::write(drill.dir.join("rollout.yaml"), &with_token).unwrap();
    *drill.samples.lock().unwrap() = Samples {
        canary: traffic(1_000.0, 1.0),
        stable: traffic(9_000.0, 9.0),
    };
    let logs = Captured::default();
    {
        let _guard = logs.logs();
        let mut runner = drill.start();
        for _ in 0..3 {
            assert!(!drill.cycle(&mut runner, Kill::None).await);
        }
        // A new token in the file is pushed at the next cycle, with an unchanged weight.
        std::fs::write(drill.dir.join("token"), format!("{TOKEN}-rotated")).unwrap();
        assert!(!drill.cycle(&mut runner, Kill::None).await);
    }
    let config = EnvoyEcdsFile::new(&drill.ecds, "cohort")
        .read_config()
        .unwrap();
    assert_eq!(
        config.force_token.as_deref(),
        Some(format!("{TOKEN}-rotated").as_str())
    );
    assert_eq!(
        config.rollouts["api"].weight_bp, 42,
        "the other rollout is kept"
    );
    let status = std::fs::read_to_string(&drill.status_file).unwrap();
    let logs = logs.text();
    assert!(!logs.is_empty(), "no logs captured");
    for (what, text) in [("the status file", &status), ("the logs", &logs)] {
        assert!(
            !text.contains(TOKEN),
            "{what} show the force token:\n{text}"
        );
    }

    // Unusable token files stop the run at start (exit code 2), naming the file, not the token.
    for (content, expected) in [
        ("short-token\n", "does not hold a usable force token"),
        ("", ""),
    ] {
        if content.is_empty() {
            std::fs::remove_file(drill.dir.join("token")).unwrap();
        } else {
            std::fs::write(drill.dir.join("token"), content).unwrap();
        }
        let args = RunArgs {
            rollout: drill.dir.join("rollout.yaml"),
            envoy_ecds: Some(drill.ecds.clone()),
            envoy_admin: None,
            prometheus: Some("http://127.0.0.1:9".into()),
            status_file: None,
            once: true,
        };
        let error = Runner::new(&args).err().unwrap();
        assert_eq!(error.exit_code(), 2);
        let shown = error.to_string();
        assert!(
            shown.contains("token") && shown.contains(expected),
            "{shown}"
        );
        assert!(!shown.contains("short-token"), "{shown}");
    }
}
