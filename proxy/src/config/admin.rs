//! The `[admin]` section: the health, readiness and metrics listener and its `/admin/*` token.

use super::problems::Problems;
use super::raw::RawAdmin;
use super::secrets::Env;
use super::{defaults, AdminConfig};

pub(super) fn admin(a: &RawAdmin, env: &dyn Env, p: &mut Problems) -> AdminConfig {
    let listen = p.address("admin.listen", a.listen.as_deref(), defaults::ADMIN_LISTEN);
    let token = a
        .token
        .as_deref()
        .and_then(|r| p.secret("admin.token", r, env));
    AdminConfig { listen, token }
}
