//! Drives the `url` fuzz target: `url [SECONDS] [SEED]` (see fuzz/src/lib.rs).

fn main() -> std::process::ExitCode {
    keyrelay_fuzz::main_for("url")
}
