//! Seeded structured mutations of corpus inputs, and the small PRNG behind them.

/// xorshift64*: tiny, seeded, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Tokens that matter to keyrelay's parsers, inserted whole.
const DICTIONARY: [&str; 58] = [
    " HTTP/1.1\r\n",
    "HTTP/1.1 100 Continue\r\n\r\n",
    "HTTP/1.0 200 OK\r\n",
    "HTTP/1.1 101 Switching Protocols\r\n",
    "connection: close\r\n",
    "content-length: ",
    "transfer-encoding: chunked\r\n",
    "\r\n\r\n",
    "0\r\n\r\n",
    "ffffffffffffffff",
    "\n",
    "\r\n",
    "=",
    "\"",
    ":",
    "/",
    "//",
    "/../",
    "%2e%2e",
    "?",
    "#",
    "@",
    "[",
    "]",
    "[[providers]]\n",
    "[server]\n",
    "[admin]\n",
    "[store]\n",
    "env:",
    "env:KR_KEY_*",
    "file:",
    "file:/dev/zero",
    "http://",
    "https://",
    "user:pw@",
    "169.254.169.254",
    "[fe80::1]",
    "0x",
    "-1",
    "0",
    "18446744073709551616",
    "1e308",
    "NaN",
    "inf",
    "0s",
    "1h2m3.5s",
    "µs",
    "ms",
    "Bearer ",
    "authorization: ",
    "x-api-key: ",
    "connection: ",
    "retry-after: ",
    "x-ratelimit-reset-requests: ",
    "x-ratelimit-remaining-tokens: ",
    "Sun, 06 Nov 1994 08:49:37 GMT",
    "\u{0}",
    "\u{feff}",
];

const INTERESTING: [u8; 10] = [0, 0x7f, 0x80, 0xff, b' ', b'\t', b'.', b'%', b'*', b'\\'];

/// One input: a seed with one to eight mutations.
pub fn mutate(seeds: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut data = seeds
        .get(rng.below(seeds.len()))
        .cloned()
        .unwrap_or_default();
    for _ in 0..=rng.below(8) {
        once(&mut data, seeds, rng);
    }
    data.truncate(64 * 1024);
    data
}

fn once(data: &mut Vec<u8>, seeds: &[Vec<u8>], rng: &mut Rng) {
    let len = data.len();
    let at = rng.below(len + 1);
    match rng.below(7) {
        0 if len > 0 => data[at.min(len - 1)] ^= 1 << rng.below(8),
        1 if len > 0 => data[at.min(len - 1)] = INTERESTING[rng.below(INTERESTING.len())],
        2 => {
            let token = DICTIONARY[rng.below(DICTIONARY.len())].as_bytes();
            data.splice(at..at, token.iter().copied());
        }
        3 if len > 0 => {
            let end = (at + 1 + rng.below(16)).min(len);
            data.drain(at.min(len - 1)..end);
        }
        4 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(32)).min(len);
            let copy = data[start..end].to_vec();
            data.splice(at..at, copy);
        }
        5 => {
            // Splice: this input up to `at`, another seed from a random point.
            let other = &seeds[rng.below(seeds.len())];
            let from = rng.below(other.len() + 1);
            data.truncate(at);
            data.extend_from_slice(&other[from..]);
        }
        _ => {
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_inputs() {
        let seeds = vec![b"retry-after: 3".to_vec(), b"x".to_vec()];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..50)
                .map(|_| mutate(&seeds, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
