//! Drives the `upstream` fuzz target: `upstream [SECONDS] [SEED]` (see fuzz/src/lib.rs).

fn main() -> std::process::ExitCode {
    keyrelay_fuzz::main_for("upstream")
}
