//! Drives the `config` fuzz target: `config [SECONDS] [SEED]` (see fuzz/src/lib.rs).

fn main() -> std::process::ExitCode {
    keyrelay_fuzz::main_for("config")
}
