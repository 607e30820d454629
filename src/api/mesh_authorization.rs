//! `MeshAuthorization` (`weir.dev/v1alpha1`): which mesh callers may reach a Service, and what
//! they may do there. The wire type only; the inbound gateway's decision is `mesh::authz`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which callers may reach a Service, and what they may do there.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(group = "weir.dev", version = "v1alpha1", kind = "MeshAuthorization", namespaced)]
#[kube(derive = "PartialEq", status = "super::PolicyStatus")]
#[kube(doc = "MeshAuthorization says which mesh callers (SPIFFE identities) may send which requests to a \
              Service; the Service's mesh gateways answer everything else 403.")]
#[serde(rename_all = "camelCase")]
pub struct MeshAuthorizationSpec {
    /// The Service (in this namespace) the rules protect. Required.
    pub target_ref: ServiceRef,

    /// What happens to a request no rule covers: `AllowAuthenticated` (any caller with a valid
    /// identity of our trust domain) or `Deny`. Default: AllowAuthenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<Mode>,

    /// Allow rules. Default: none (the default mode decides every request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSpec>,
}

/// A Service of the policy's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    /// Must be "" (the core API group). Default: "".
    #[serde(default)]
    pub group: String,
    /// Must be Service. Default: Service.
    #[serde(default = "service_kind")]
    pub kind: String,
    /// The Service's name. Required.
    pub name: String,
}

fn service_kind() -> String {
    "Service".into()
}

/// The decision for requests no rule covers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    AllowAuthenticated,
    Deny,
}

/// Callers allowed to make the requests of `to`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// The callers, each by exact identity or by namespace. Required, at least one.
    #[schemars(length(min = 1))]
    pub from: Vec<CallerSpec>,
    /// The requests the rule covers; any of them. Default: absent, meaning every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<OperationSpec>>,
}

/// One caller or a namespace of callers; set exactly one field.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct CallerSpec {
    /// An exact SPIFFE ID, e.g. spiffe://cluster.local/ns/shop/sa/checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Every identity `spiffe://<our trust domain>/ns/<namespace>/sa/...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Requests: a path prefix and methods, both optional.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OperationSpec {
    /// Matches this path and the paths below it, by whole segments (`/pay` covers `/pay` and
    /// `/pay/x`, not `/payments`). Default: every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// HTTP methods, upper case. Default: every method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
}

/// The `MeshAuthorization` CRD rendered as YAML (`deploy/crds/meshauthorizations.weir.dev.yaml`).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    crate::api::crd_yaml(MeshAuthorization::crd())
}

#[cfg(test)]
mod tests {
    use super::crd_yaml;

    #[test]
    fn the_crd_on_disk_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds/meshauthorizations.weir.dev.yaml");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(on_disk == crd_yaml(), "{path} is stale; regenerate it with `weir crds`");
    }
}
