//! Drives the `headers` fuzz target: `headers [SECONDS] [SEED]` (see fuzz/src/lib.rs).

fn main() -> std::process::ExitCode {
    keyrelay_fuzz::main_for("headers")
}
