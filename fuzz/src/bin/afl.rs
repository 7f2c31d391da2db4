//! AFL++ entry point: `afl TARGET`, inputs from AFL++ (built with `cargo afl build --features afl`).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = keyrelay_fuzz::target(&name) else {
        eprintln!("usage: afl <config|h1|headers|ratelimit|upstream|url>");
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
