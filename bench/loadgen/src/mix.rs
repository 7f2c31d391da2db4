//! The kinds of request in a mix, how each is sent, and what counts as its expected outcome.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use std::time::{Duration, Instant};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One kind of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A chat completion: 200 with a whole JSON body.
    Normal,
    /// A 20-chunk stream: 200, a clean end, `[DONE]`.
    Stream,
    /// Every key answers 429 with `Retry-After: 0`: the client gets the provider's 429.
    RateLimited,
    /// Every key answers 500: the client gets a 500.
    ServerError,
    /// A stream cut after 2 chunks: 200, then an unclean end.
    Cut,
    /// A slow stream the client leaves after its first chunk.
    Disconnect,
    /// A 2-second stream (100 chunks 20 ms apart) read to its end: 200, clean, `[DONE]`.
    Long,
    /// Every key refused for this request (403 permission): the client gets a 403.
    Refused,
    /// The provider reads the body and drops the connection: the client gets a 502.
    Drop,
}

impl Kind {
    pub fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "normal" => Kind::Normal,
            "stream" => Kind::Stream,
            "429" => Kind::RateLimited,
            "5xx" => Kind::ServerError,
            "cut" => Kind::Cut,
            "disconnect" => Kind::Disconnect,
            "long" => Kind::Long,
            "refused" => Kind::Refused,
            "drop" => Kind::Drop,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Normal => "normal",
            Kind::Stream => "stream",
            Kind::RateLimited => "429",
            Kind::ServerError => "5xx",
            Kind::Cut => "cut",
            Kind::Disconnect => "disconnect",
            Kind::Long => "long",
            Kind::Refused => "refused",
            Kind::Drop => "drop",
        }
    }

    /// The request's extra headers and whether it streams.
    fn shape(self) -> (&'static [(&'static str, &'static str)], bool) {
        match self {
            Kind::Normal => (&[], false),
            Kind::Stream => (&[("x-mock-chunks", "20")], true),
            Kind::RateLimited => (&[("x-mock-fault", "429=0")], false),
            Kind::ServerError => (&[("x-mock-fault", "status=500")], false),
            Kind::Cut => (
                &[("x-mock-fault", "fin-after=2"), ("x-mock-chunks", "20")],
                true,
            ),
            Kind::Disconnect | Kind::Long => {
                (&[("x-mock-chunks", "100"), ("x-mock-delay-ms", "20")], true)
            }
            Kind::Refused => (&[("x-mock-fault", "forbidden=/v1")], false),
            Kind::Drop => (&[("x-mock-fault", "drop-after-body")], false),
        }
    }
}

/// A weighted mix, e.g. `normal=60,stream=30,429=10`.
#[derive(Clone, Debug)]
pub struct Mix(Vec<(Kind, u32)>);

impl Mix {
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut out = Vec::new();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or(format!("'{part}': want kind=weight"))?;
            let kind = Kind::parse(name.trim()).ok_or(format!("unknown kind '{name}'"))?;
            let weight = weight
                .trim()
                .parse::<u32>()
                .map_err(|e| format!("'{part}': {e}"))?;
            out.push((kind, weight));
        }
        if out.iter().map(|(_, w)| w).sum::<u32>() == 0 {
            return Err("the mix has no weight".into());
        }
        Ok(Mix(out))
    }

    /// The kind of request number `i`: spread evenly by weight, the same for every run.
    pub fn pick(&self, i: u64) -> Kind {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        // A multiplicative hash spreads consecutive numbers over the whole range.
        let mut at = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % total;
        for (kind, w) in &self.0 {
            if at < u64::from(*w) {
                return *kind;
            }
            at -= u64::from(*w);
        }
        Kind::Normal
    }
}

/// One request's result.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub kind: Kind,
    /// Whether it came out as its kind expects.
    pub expected: bool,
    /// To the response head.
    pub head: Duration,
    pub detail: String,
}

/// Send one request of `kind` (a stream asking for usage when `usage`) and judge it.
pub async fn run(
    client: &HttpClient,
    url: &str,
    token: &str,
    (kind, usage): (Kind, bool),
    timeout: Duration,
) -> Outcome {
    let started = Instant::now();
    let judged = tokio::time::timeout(timeout, send(client, url, token, kind, usage)).await;
    let (expected, detail, head) = match judged {
        Ok(Ok((ok, detail, head))) => (ok, detail, head),
        Ok(Err(e)) => (false, e, started.elapsed()),
        Err(_) => (
            false,
            format!("no answer within {timeout:?}"),
            started.elapsed(),
        ),
    };
    Outcome {
        kind,
        expected,
        head,
        detail,
    }
}

async fn send(
    client: &HttpClient,
    url: &str,
    token: &str,
    kind: Kind,
    usage: bool,
) -> Result<(bool, String, Duration), String> {
    let (headers, stream) = kind.shape();
    let body: &'static [u8] = if stream {
        crate::streams::body(usage)
    } else {
        br#"{"model":"mock","messages":[{"role":"user","content":"hi"}]}"#
    };
    let mut req = Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from_static(body)))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let head = started.elapsed();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    if kind == Kind::Disconnect {
        let first = body.frame().await;
        let ok = status == 200 && matches!(first, Some(Ok(_)));
        return Ok((
            ok,
            format!("status {status}, left after the first chunk"),
            head,
        ));
    }
    let mut got = Vec::new();
    let clean = loop {
        match body.frame().await {
            Some(Ok(f)) => {
                got.extend_from_slice(f.data_ref().map(|d| d.as_ref()).unwrap_or_default())
            }
            Some(Err(_)) => break false,
            None => break true,
        }
    };
    let done = got.windows(6).any(|w| w == b"[DONE]");
    let ok = match kind {
        Kind::Normal => status == 200 && clean,
        Kind::Stream | Kind::Long => status == 200 && clean && done,
        Kind::Refused => status == 403 && clean,
        Kind::Drop => status == 502 && clean,
        Kind::RateLimited => status == 429 && clean,
        Kind::ServerError => status == 500 && clean,
        Kind::Cut => status == 200 && !clean && !done,
        Kind::Disconnect => unreachable!("answered above"),
    };
    Ok((
        ok,
        format!("status {status}, clean end {clean}, [DONE] {done}"),
        head,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_is_spread_by_weight() {
        let mix = Mix::parse("normal=60,stream=30,429=10").unwrap();
        let mut counts = [0u32; 3];
        for i in 0..10_000 {
            counts[match mix.pick(i) {
                Kind::Normal => 0,
                Kind::Stream => 1,
                _ => 2,
            }] += 1;
        }
        assert!((5_800..=6_200).contains(&counts[0]), "{counts:?}");
        assert!((2_800..=3_200).contains(&counts[1]), "{counts:?}");
        assert!((800..=1_200).contains(&counts[2]), "{counts:?}");
        assert!(Mix::parse("normal=0").is_err());
        assert!(Mix::parse("bogus=1").is_err());
        assert!(Mix::parse("normal").is_err());
    }
}
