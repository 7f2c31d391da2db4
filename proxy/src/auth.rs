//! Client authentication: which configured client, if any, a request's token belongs to.

use crate::config::ClientConfig;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Client tokens, held only as SHA-256 digests so comparisons are fixed-length and
/// constant-time, and the tokens themselves are not kept in memory past start-up.
pub struct ClientAuth {
    clients: Vec<Client>,
    open: bool,
}

/// One client: its name, its token's digest and its default key group.
struct Client {
    name: String,
    digest: [u8; 32],
    group: Option<String>,
}

impl ClientAuth {
    /// `open`: no clients configured and unauthenticated use explicitly allowed.
    pub fn new(clients: &[ClientConfig], allow_unauthenticated: bool) -> Self {
        ClientAuth {
            clients: clients
                .iter()
                .map(|c| Client {
                    name: c.name.clone(),
                    digest: Sha256::digest(c.token.expose().as_bytes()).into(),
                    group: c.group.clone(),
                })
                .collect(),
            open: clients.is_empty() && allow_unauthenticated,
        }
    }

    /// The name of the client any presented credential belongs to. Every presented value is
    /// compared with every token, with no early exit, so timing reveals nothing.
    pub fn authenticate(&self, presented: &[&[u8]]) -> Option<&str> {
        self.identify(presented).map(|(name, _)| name)
    }

    /// As [`ClientAuth::authenticate`], with the client's default key group.
    pub fn identify(&self, presented: &[&[u8]]) -> Option<(&str, Option<&str>)> {
        if self.open {
            return Some(("anonymous", None));
        }
        let mut found: Option<usize> = None;
        for value in presented {
            let digest: [u8; 32] = Sha256::digest(value).into();
            for (i, c) in self.clients.iter().enumerate() {
                if bool::from(digest.ct_eq(&c.digest)) {
                    found = found.or(Some(i));
                }
            }
        }
        found.map(|i| {
            (
                self.clients[i].name.as_str(),
                self.clients[i].group.as_deref(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyrelay_pool::Secret;

    #[test]
    fn matches_any_presented_token() {
        let clients = vec![
            ClientConfig {
                name: "a".into(),
                token: Secret::new("tok-a"),
                rpm: None,
                tpm: None,
                group: None,
            },
            ClientConfig {
                name: "b".into(),
                token: Secret::new("tok-b"),
                rpm: None,
                tpm: None,
                group: Some("batch".into()),
            },
        ];
        let auth = ClientAuth::new(&clients, false);
        assert_eq!(auth.authenticate(&[b"nope", b"tok-b"]), Some("b"));
        assert_eq!(auth.authenticate(&[b"tok-a"]), Some("a"));
        assert_eq!(auth.identify(&[b"tok-b"]), Some(("b", Some("batch"))));
        assert_eq!(auth.identify(&[b"tok-a"]), Some(("a", None)));
        assert_eq!(auth.authenticate(&[b"tok-"]), None);
        assert_eq!(auth.authenticate(&[]), None);
        let open = ClientAuth::new(&[], true);
        assert_eq!(open.authenticate(&[]), Some("anonymous"));
    }
}
