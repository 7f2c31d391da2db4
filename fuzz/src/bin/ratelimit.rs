//! Drives the `ratelimit` fuzz target: `ratelimit [SECONDS] [SEED]` (see fuzz/src/lib.rs).

fn main() -> std::process::ExitCode {
    keyrelay_fuzz::main_for("ratelimit")
}
