//! The closed label sets of keyrelay's metrics: every label value comes from one of these enums
//! or from a name in the validated config.

/// Status classes of client-facing responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirect,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub const ALL: [StatusClass; 5] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirect,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    pub fn of(status: u16) -> StatusClass {
        match status {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirect,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirect => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }
}

/// Why a client was refused before routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential at all.
    Missing,
    /// A credential that matches no client.
    Invalid,
}

impl AuthFailure {
    pub fn label(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
        }
    }
}

/// How a config reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    Failure,
}

impl ReloadResult {
    pub fn label(&self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
}

/// Pool store operations that are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    Acquire,
}

impl StoreOp {
    pub fn label(&self) -> &'static str {
        match self {
            StoreOp::Acquire => "acquire",
        }
    }
}

/// Whose pool a series counts: its `tenant` label. Bounded by the config: the configured
/// tenants, `shared`, and one label for every tenant created at run time (unless the operator
/// opted in to their names), so a client of the admin API cannot grow the label set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tenant<'a> {
    /// The shared pools, used by clients of no tenant.
    Shared,
    /// A configured tenant, or a runtime one when `[metrics] runtime_tenant_labels` is on.
    Named(&'a str),
    /// Every tenant created at run time, together; their keys, named at run time, are
    /// counted under this one key label as well.
    Runtime,
}

impl Tenant<'_> {
    /// The shared pools' label; no tenant may take this name.
    pub const SHARED: &'static str = "shared";
    /// The runtime tenants' shared label; no tenant may take this name.
    pub const RUNTIME: &'static str = "runtime";

    pub fn label(&self) -> &str {
        match self {
            Tenant::Shared => Tenant::SHARED,
            Tenant::Named(name) => name,
            Tenant::Runtime => Tenant::RUNTIME,
        }
    }
}
