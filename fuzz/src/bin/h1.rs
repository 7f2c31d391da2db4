//! Drives the `h1` fuzz target: `h1 [SECONDS] [SEED]` (see fuzz/src/lib.rs).

fn main() -> std::process::ExitCode {
    keyrelay_fuzz::main_for("h1")
}
