//! `Sec-WebSocket-Protocol` surgery: the client token a browser client carries in an
//! `openai-insecure-api-key.<token>` subprotocol, the list sent upstream (the token swapped for
//! the provider key, or dropped), and the upstream's choice mapped back to what the client
//! offered, so no key ever reaches the client in the 101 answer.

use http::header::{HeaderMap, HeaderValue, SEC_WEBSOCKET_PROTOCOL};

/// The subprotocol prefix OpenAI's browser clients carry their key in.
pub const KEY_PROTOCOL: &str = "openai-insecure-api-key.";

/// The subprotocols a client offered, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protocols {
    offered: Vec<String>,
}

/// The list sent upstream, each entry with the index of the client's entry it stands for.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    entries: Vec<(String, usize)>,
}

impl Protocols {
    /// Every comma-separated entry of every `Sec-WebSocket-Protocol` header.
    pub fn from_headers(headers: &HeaderMap) -> Protocols {
        let offered = headers
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        Protocols { offered }
    }

    /// The tokens the client presented in key subprotocols.
    pub fn tokens(&self) -> impl Iterator<Item = &[u8]> {
        self.offered
            .iter()
            .filter_map(|p| p.strip_prefix(KEY_PROTOCOL))
            .map(str::as_bytes)
    }

    /// Whether the client authenticated (or tried to) in the subprotocol form.
    pub fn has_token(&self) -> bool {
        self.tokens().next().is_some()
    }

    /// The list to send upstream: each key subprotocol replaced by `key` in the same form when
    /// given (the provider takes its key there), else left out (the key goes in a header).
    pub fn upstream(&self, key: Option<&str>) -> Sent {
        let entries = self
            .offered
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match (p.starts_with(KEY_PROTOCOL), key) {
                (false, _) => Some((p.clone(), i)),
                (true, Some(key)) => Some((format!("{KEY_PROTOCOL}{key}"), i)),
                (true, None) => None,
            })
            .collect();
        Sent { entries }
    }

    /// The subprotocol to tell the client for the upstream's `chosen`: the client's own entry
    /// at the place of the one the upstream picked. `None` when the upstream picked none, or
    /// something never offered (then nothing of it is repeated).
    pub fn answer(&self, sent: &Sent, chosen: Option<&HeaderValue>) -> Option<HeaderValue> {
        let chosen = chosen?.to_str().ok()?.trim();
        let (_, i) = sent.entries.iter().find(|(p, _)| p == chosen)?;
        HeaderValue::from_str(self.offered.get(*i)?).ok()
    }
}

impl Sent {
    /// The header value, marked sensitive (it may hold the provider key); `None` when empty.
    pub fn header(&self) -> Option<HeaderValue> {
        if self.entries.is_empty() {
            return None;
        }
        let joined: Vec<&str> = self.entries.iter().map(|(p, _)| p.as_str()).collect();
        let mut value = HeaderValue::from_str(&joined.join(", ")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(value: &str) -> Protocols {
        let mut h = HeaderMap::new();
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(value).unwrap(),
        );
        Protocols::from_headers(&h)
    }

    #[test]
    fn the_token_is_swapped_and_never_answered() {
        let p = offered("realtime, openai-insecure-api-key.tok-1, openai-beta.realtime-v1");
        assert_eq!(p.tokens().collect::<Vec<_>>(), [b"tok-1".as_slice()]);
        let sent = p.upstream(Some("sk-key"));
        let header = sent.header().unwrap();
        assert_eq!(
            header.to_str().unwrap(),
            "realtime, openai-insecure-api-key.sk-key, openai-beta.realtime-v1"
        );
        assert!(header.is_sensitive());
        let chosen = HeaderValue::from_static("openai-insecure-api-key.sk-key");
        let answer = p.answer(&sent, Some(&chosen)).unwrap();
        assert_eq!(answer, "openai-insecure-api-key.tok-1");
        let chosen = HeaderValue::from_static("realtime");
        assert_eq!(p.answer(&sent, Some(&chosen)).unwrap(), "realtime");
        let unknown = HeaderValue::from_static("sk-key");
        assert_eq!(p.answer(&sent, Some(&unknown)), None);
    }

    #[test]
    fn without_a_key_form_the_token_is_dropped() {
        let p = offered("realtime, openai-insecure-api-key.tok-1");
        let sent = p.upstream(None);
        assert_eq!(sent.header().unwrap().to_str().unwrap(), "realtime");
        let chosen = HeaderValue::from_static("realtime");
        assert_eq!(p.answer(&sent, Some(&chosen)).unwrap(), "realtime");
        assert!(offered("openai-insecure-api-key.t")
            .upstream(None)
            .header()
            .is_none());
        assert!(!offered("realtime").has_token());
    }
}
