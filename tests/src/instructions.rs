//! Instructions Envoy executes per request, counted by valgrind's callgrind: the same count
//! for the same binary, requests and config however busy the machine is, so one run compares
//! the benchmark's set-ups to within a fraction of a percent where CPU time needs many noisy
//! repetitions (`scripts/bench-envoy --instructions`, BENCHMARKS.md).
//!
//! Envoy starts under `valgrind --tool=callgrind` with instrumentation off (start-up is not
//! counted and runs faster); [`Counted::measure`] switches it on, warms up, zeroes the counters,
//! sends the requests one at a time on one keep-alive connection, and dumps the counters: all
//! threads of Envoy (main, worker, V8's) and the wasm code V8 compiled, over exactly those
//! requests and the idle ticks in between.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bench::{Setup, HOSTS};
use crate::envoy::Envoy;
use crate::{Context, Error, Result, TempDir};

/// How long Envoy gets to start under valgrind (V8 compiles the `.wasm` ten or more times
/// slower than natively).
const START_DEADLINE: Duration = Duration::from_secs(600);

/// One set-up's Envoy running under callgrind.
#[derive(Debug)]
pub struct Counted {
    envoy: Envoy,
    pid: u32,
    dir: TempDir,
    last_dump: RefCell<Option<PathBuf>>,
}

/// What one measurement counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Count {
    /// Requests sent (each answered 2xx).
    pub requests: u64,
    /// Instructions Envoy executed meanwhile, all threads.
    pub instructions: u64,
    /// Wall time of the measurement (under valgrind: for the idle correction only).
    pub wall: Duration,
}

impl Count {
    /// Instructions per request.
    pub fn per_request(&self) -> f64 {
        self.instructions as f64 / self.requests.max(1) as f64
    }
}

impl Counted {
    /// Starts `setup` with one worker under callgrind, instrumentation off.
    pub fn start(setup: Setup) -> Result<Counted> {
        let dir = TempDir::new("callgrind")?;
        let out = dir.path().join("callgrind.out");
        let run_under = vec![
            "valgrind".to_owned(),
            "--tool=callgrind".to_owned(),
            "--instr-atstart=no".to_owned(),
            format!("--callgrind-out-file={}", out.display()),
            "--quiet".to_owned(),
        ];
        let envoy = setup.start_under(1, &run_under, Some(START_DEADLINE))?;
        let pid = envoy
            .pid()
            .ok_or_else(|| Error("Envoy is not running".into()))?;
        let counted = Counted {
            envoy,
            pid,
            dir,
            last_dump: RefCell::new(None),
        };
        counted.control(&["--instr=on"])?;
        Ok(counted)
    }

    /// Sends `warmup` requests (V8 tiers the hot wasm functions up meanwhile), then counts the
    /// instructions of `requests` more: request `n` goes to `HOSTS[n % 3]` as user `user-n`,
    /// as in the `wrk` script.
    pub fn measure(&self, warmup: u64, requests: u64) -> Result<Count> {
        let mut client = self.envoy.client();
        client.set_timeout(Duration::from_secs(60));
        let mut send = |n: u64, user: &str| -> Result<()> {
            let host = HOSTS[(n % HOSTS.len() as u64) as usize];
            let response = client.get(
                "/",
                &[(b"host", host.as_bytes()), (b"x-user-id", user.as_bytes())],
            )?;
            if response.status / 100 == 2 {
                Ok(())
            } else {
                Err(self
                    .envoy
                    .failure(&format!("request {n} answered {}", response.status)))
            }
        };
        for n in 0..warmup {
            send(n, &format!("warmup-{n}"))?;
        }
        self.control(&["--zero"])?;
        let started = Instant::now();
        for n in 1..=requests {
            send(n, &format!("user-{n}"))?;
        }
        let wall = started.elapsed();
        let instructions = self.dump()?;
        Ok(Count {
            requests,
            instructions,
            wall,
        })
    }

    /// Counts the instructions of `wall` without requests: the timers and polls that run
    /// however many requests arrive.
    pub fn idle(&self, wall: Duration) -> Result<Count> {
        self.control(&["--zero"])?;
        let started = Instant::now();
        std::thread::sleep(wall);
        let wall = started.elapsed();
        let instructions = self.dump()?;
        Ok(Count {
            requests: 0,
            instructions,
            wall,
        })
    }

    /// Dumps the counters and returns the instructions since the last zeroing.
    fn dump(&self) -> Result<u64> {
        let before = self.dumps()?;
        self.control(&["--dump"])?;
        let file = self
            .dumps()?
            .into_iter()
            .find(|path| !before.contains(path))
            .ok_or_else(|| Error("callgrind_control --dump wrote no file".into()))?;
        let text = fs::read_to_string(&file).context(|| format!("reading {}", file.display()))?;
        let instructions =
            totals(&text).ok_or_else(|| Error(format!("no totals in {}", file.display())))?;
        self.last_dump.replace(Some(file));
        Ok(instructions)
    }

    /// Copies the last dump (a callgrind profile, for `callgrind_annotate`) to `to`.
    pub fn save_last_dump(&self, to: &Path) -> Result<()> {
        let last = self.last_dump.borrow();
        let from = last
            .as_ref()
            .ok_or_else(|| Error("nothing was dumped yet".into()))?;
        fs::copy(from, to).context(|| format!("copying {} to {}", from.display(), to.display()))?;
        Ok(())
    }

    fn dumps(&self) -> Result<Vec<PathBuf>> {
        Ok(fs::read_dir(self.dir.path())?
            .filter_map(|entry| Some(entry.ok()?.path()))
            .filter(|path| is_dump(path))
            .collect())
    }

    fn control(&self, args: &[&str]) -> Result<()> {
        let output = Command::new("callgrind_control")
            .args(args)
            .arg(self.pid.to_string())
            .output()
            .context(|| {
                "running callgrind_control (Debian: apt-get install valgrind)".to_owned()
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(Error(format!(
                "callgrind_control {} {} failed ({}): {}{}",
                args.join(" "),
                self.pid,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }
}

fn is_dump(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("callgrind.out"))
}

/// The instruction count of a callgrind dump: its `summary:` line, which `callgrind_annotate`
/// reports as the program's total (the closing `totals:` line, which sums only the cost lines
/// written, when there is no summary).
fn totals(dump: &str) -> Option<u64> {
    let count = |prefix: &str| {
        dump.lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    count("summary:").or_else(|| count("totals:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_totals_line_gives_the_instructions() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\n\nfn=(1) main\n\
                    3 20\nsummary: 1234567\ntotals: 7654321\n";
        assert_eq!(totals(dump), Some(1234567));
        assert_eq!(totals("events: Ir\ntotals: 42\n"), Some(42));
        assert_eq!(totals("totals: 5\nsummary: 6\n"), Some(6));
        assert_eq!(totals("events: Ir\n"), None);
        assert_eq!(totals("totals: many\n"), None);
        assert!(is_dump(Path::new("/x/callgrind.out.1")));
        assert!(!is_dump(Path::new("/x/envoy.log")));
    }
}
