//! keyrelay's fuzz targets and a small stable-Rust driver for them.
//!
//! Each target in [`targets`] takes raw bytes and panics when a property fails (a panic inside
//! keyrelay, a secret in an error, a joined URL on another host...). The same functions run
//! under AFL++ (the `afl` binary, feature `afl`, coverage-guided) or under [`drive`]: inputs
//! from the committed seed corpus (`fuzz/corpus/<target>/`), each changed by a few seeded
//! random mutations (bit flips, interesting bytes, inserted dictionary tokens, deleted or
//! duplicated ranges, splices with another seed). The driver has no coverage feedback; it is
//! what runs where AFL++ is not installed.

pub mod mutate;
pub mod targets;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A target: bytes in, panic on a broken property.
pub type Target = fn(&[u8]);

/// Every target by name.
pub const TARGETS: [(&str, Target); 6] = [
    ("config", targets::config),
    ("h1", targets::h1),
    ("headers", targets::headers),
    ("ratelimit", targets::ratelimit),
    ("upstream", targets::upstream),
    ("url", targets::url),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The seed corpus of `name`, in file-name order.
pub fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

/// What a run did.
#[derive(Debug)]
pub struct Report {
    pub executions: u64,
    /// The first input that failed and its panic message.
    pub finding: Option<(Vec<u8>, String)>,
}

/// Run `target` on every seed, then on mutated seeds until `budget` passes or an input fails.
/// How long a run mutates once the corpus has run: for a time (the command line), or for a
/// number of mutated inputs (the tests, so a loaded machine cannot shorten them).
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    Time(Duration),
    Mutations(u64),
}

pub fn drive(name: &str, target: Target, budget: Budget, seed: u64) -> Report {
    let seeds = corpus(name);
    let mut rng = mutate::Rng::new(seed);
    let started = Instant::now();
    let mut executions = 0u64;
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut next = seeds.iter().cloned();
    let finding = loop {
        let input = match next.next() {
            Some(seed) => seed,
            None if spent(budget, started, executions - seeds.len() as u64) => break None,
            None => mutate::mutate(&seeds, &mut rng),
        };
        executions += 1;
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| target(&input))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic without a message".to_owned());
            break Some((input, message));
        }
    };
    std::panic::set_hook(quiet);
    Report {
        executions,
        finding,
    }
}

fn spent(budget: Budget, started: Instant, mutated: u64) -> bool {
    match budget {
        Budget::Time(limit) => started.elapsed() >= limit,
        Budget::Mutations(n) => mutated >= n,
    }
}

/// `<target> [SECONDS] [SEED]`: drive one target and report; a finding is written to
/// `fuzz/artifacts/<target>/` and makes the exit status 1.
pub fn main_for(name: &str) -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let Some(target) = target(name) else {
        eprintln!("no target {name}");
        return std::process::ExitCode::FAILURE;
    };
    let report = drive(
        name,
        target,
        Budget::Time(Duration::from_secs(seconds)),
        seed,
    );
    match report.finding {
        None => {
            println!(
                "{name}: {} executions in {seconds} s (seed {seed}), no finding",
                report.executions
            );
            std::process::ExitCode::SUCCESS
        }
        Some((input, message)) => {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("artifacts")
                .join(name);
            let file = dir.join(format!("finding-{seed}"));
            let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, &input));
            println!(
                "{name}: FINDING after {} executions (seed {seed}): {message}\ninput saved to {} ({saved:?}): {:?}",
                report.executions,
                file.display(),
                String::from_utf8_lossy(&input)
            );
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed corpora pass, and a short mutated run too: the corpus is a regression
    /// suite (a finding's input is added to it once fixed).
    #[test]
    fn every_target_passes_its_corpus_and_a_short_run() {
        for (name, target) in TARGETS {
            assert!(!corpus(name).is_empty(), "{name} has no seed corpus");
            let report = drive(name, target, Budget::Mutations(2_000), 7);
            assert!(report.finding.is_none(), "{name}: {:?}", report.finding);
            assert_eq!(report.executions, corpus(name).len() as u64 + 2_000);
        }
    }

    #[test]
    fn a_failing_property_is_reported_with_its_input() {
        fn fails_on_x(data: &[u8]) {
            assert!(!data.contains(&b'x'), "found an x");
        }
        let report = drive(
            "ratelimit",
            fails_on_x,
            Budget::Time(Duration::from_secs(5)),
            1,
        );
        let (input, message) = report.finding.expect("the driver finds an x");
        assert!(input.contains(&b'x'));
        assert!(message.contains("found an x"));
    }
}
